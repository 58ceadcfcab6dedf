"""Declarative side of alignflow: the config schema, its loader and the YAML profiles."""

from alignflow.conf.loader import ConfigError, load_config
from alignflow.conf.schema import PipelineConfig

__all__ = ["ConfigError", "PipelineConfig", "load_config"]
