"""Versioned VM templates: build (cloud image through the API, or Packer), list, prune, resolve.

Other stages use :func:`resolve_template` to find the version a VM is cloned from.
"""

from homelab.templates.facts import TemplateMissing, TemplateVersion, resolve_template
from homelab.templates.naming import description_line, parse_description

__all__ = ["TemplateMissing", "TemplateVersion", "description_line", "parse_description", "resolve_template"]
