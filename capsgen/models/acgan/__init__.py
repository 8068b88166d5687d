"""Auxiliary-classifier GAN (Odena et al.) as Chen et al. (G-CapsNets) use it to draw MNIST-like
test digits: ``config.ACGANConfig`` (torch-free settings) and ``nets`` (the class-conditional
generator, the discriminator with a source and a class head, and the AC-GAN losses).
"""
