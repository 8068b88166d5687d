"""``capsnet``: the CapsNet classifier of Sabour, Frosst & Hinton (2017)."""
from capsgen.models.capsnet.config import CapsNetConfig
from capsgen.models.family import Family


def _task():
    from capsgen.models.capsnet.task import CapsNetTask

    return CapsNetTask


FAMILY = Family("capsnet", "CapsNet classifier with dynamic routing and a reconstruction decoder",
                CapsNetConfig, _task, ("classify",), paper="Sabour et al. 2017")
