"""The pipeline's configuration: one pydantic model per YAML section, each in its own module.

Keys that mean a TRL or transformers field carry that field's name (beta, loss_type,
learning_rate, max_length, ...), as alignment-handbook recipes do. Every model forbids
unknown keys, so a typo stops the run before any compute starts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

from alignflow.conf.base import Section
from alignflow.conf.comparison import ComparisonConfig
from alignflow.conf.evaluation import EvaluationConfig, RegistryConfig, default_model_name
from alignflow.conf.generation import GenerationConfig
from alignflow.conf.merge import deep_merge
from alignflow.conf.reward_model import RewardModelConfig
from alignflow.conf.runtime import RuntimeConfig
from alignflow.conf.training import TrainingConfig
from alignflow.conf.validation import ValidationConfig


class PipelineConfig(Section):
    """One alignment run, from prompts to a registered model."""

    name: str = Field("alignflow-smollm2", min_length=1, description="Run name, shown in Prefect and MLflow.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    comparison: ComparisonConfig = Field(default_factory=ComparisonConfig)
    # `alignflow reward-model` only: a reward model trained from the same validated data, registered on its own.
    reward_model: RewardModelConfig = Field(default_factory=RewardModelConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="before")
    @classmethod
    def _recipes_start_from_training(cls, data: Any) -> Any:
        """Each recipe is the `training` section with the recipe's keys on top (nested sections merged), so
        errors name the recipe's own key path (comparison.recipes.orpo.beta)."""
        if not isinstance(data, dict) or not isinstance(data.get("comparison"), dict):
            return data
        recipes, base = data["comparison"].get("recipes"), data.get("training") or {}
        base = base.model_dump() if isinstance(base, BaseModel) else base
        if not isinstance(recipes, dict) or not isinstance(base, dict):
            return data
        merged = {
            name: deep_merge(base, recipe or {}) if isinstance(recipe, dict | None) else recipe
            for name, recipe in recipes.items()
        }
        return {**data, "comparison": {**data["comparison"], "recipes": merged}}

    @model_validator(mode="after")
    def _registry_name_follows_the_base_model(self) -> PipelineConfig:
        # Unset, registry.model_name is the base model's: a profile that changes the base model starts a
        # registered model (and a champion lineage) of its own. A name the profile sets is kept.
        if "model_name" not in self.registry.model_fields_set:
            self.registry.model_name = default_model_name(self.training.model_name_or_path)
        return self

    @model_validator(mode="after")
    def _recipes_share_the_base_model(self) -> PipelineConfig:
        # Every recipe trains from the one base model the comparison builds and evaluates against, with the chat
        # template its data was generated and validated with.
        for name, recipe in self.comparison.recipes.items():
            for key in ("model_name_or_path", "tiny_model", "chat_template"):
                if getattr(recipe, key) != getattr(self.training, key):
                    raise ValueError(
                        f"comparison.recipes.{name}.{key}: recipes share the base model of training.{key}; "
                        "compare base models in separate runs"
                    )
        return self
