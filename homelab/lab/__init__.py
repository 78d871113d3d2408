"""The lab file: models, loading with line numbers, cross-field checks."""

from homelab.lab.loader import find_lab_path, load_lab
from homelab.lab.models import Lab

__all__ = ["Lab", "find_lab_path", "load_lab"]
