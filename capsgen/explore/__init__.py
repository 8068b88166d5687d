"""``capsgen explore``: a local web page to steer what a trained run's capsules and latents encode.

:mod:`capsgen.explore.api` answers the JSON endpoints, :mod:`capsgen.explore.server` serves them
and the page (``static/``: plain HTML, JS and CSS shipped as package data; no build step, no CDN).
"""
