"""cryorecon: ab initio cryo-EM reconstruction by mini-batch SGD with marginalised poses."""

__version__ = "0.1.0"
