"""Versioned VM templates: build (cloud image through the API, or Packer), list, prune, resolve.

Other stages use :func:`resolve_template` to find the version a VM is cloned from.
"""

from homelab.templates.facts import TemplateMissing, TemplateVersion, resolve_template

__all__ = ["TemplateMissing", "TemplateVersion", "resolve_template"]
