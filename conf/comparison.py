"""`comparison`: recipes (and grids of knobs) trained side by side on one split by `alignflow compare`."""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails

from alignflow.conf.base import Section
from alignflow.conf.training import TrainingConfig, trl_problems

COMPARISON_METRICS = ("win_rate_low", "win_rate", "preference_accuracy", "reward_margin", "logp_accuracy")
RecipeName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$", max_length=64)]


class Recipe(NamedTuple):
    """One expanded recipe: a readable name (`orpo[beta=0.1]`) and the training section it runs."""

    name: str
    training: TrainingConfig


def knob_label(value: Any) -> str:
    """A grid value as it reads in a recipe name: `0.1`, `true`, `sigmoid+sft`."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "+".join(knob_label(v) for v in value)
    return str(value)


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of a grid, in declaration order: {beta: [a, b], loss_type: [c]} -> 2 points."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def with_knobs(training: BaseModel, point: dict[str, Any]) -> TrainingConfig:
    """`training` with the knobs of one grid point set (`sft.learning_rate` reaches into a sub-section)."""
    data = training.model_dump(exclude={"grid"})
    for key, value in point.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"{key}: {part} is not a section of training")
            node = node[part]
        node[leaf] = value
    return TrainingConfig.model_validate(data)


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'training'}: {'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}"
        for e in exc.errors()
    )


class RecipeConfig(TrainingConfig):
    """One recipe of a comparison: the profile's `training` section with this recipe's keys on top, and an
    optional grid of knobs whose every combination becomes a recipe of its own."""

    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Knob (a training key, `sft.learning_rate` for a sub-section) -> values; the cartesian "
        "product expands into recipes named like `orpo[beta=0.1]`.",
    )

    @field_validator("grid", mode="before")
    @classmethod
    def _nested_knobs_are_dotted(cls, grid: Any) -> Any:
        """`{sft: {learning_rate: [..]}}` (what `grid.sft.learning_rate=[..]` overrides build) is `sft.learning_rate`."""
        if not isinstance(grid, dict):
            return grid
        flat: dict[str, Any] = {}
        for key, value in grid.items():
            if isinstance(value, dict):
                flat.update({f"{key}.{k}": v for k, v in cls._nested_knobs_are_dotted(value).items()})
            else:
                flat[key] = value
        return flat

    @model_validator(mode="after")
    def _every_point_is_a_valid_recipe(self) -> RecipeConfig:
        empty = [key for key, values in self.grid.items() if not values]
        if empty:
            raise _grid_error(self.grid, f"{', '.join(empty)}: give at least one value")
        for point in grid_points(self.grid):
            try:
                with_knobs(self, point)
            except ValidationError as exc:
                raise _grid_error(self.grid, f"grid point [{_label(point)}]: {_problems(exc)}") from None
        return self


def _label(point: dict[str, Any]) -> str:
    return ",".join(f"{k}={knob_label(v)}" for k, v in point.items())


def _grid_error(grid: dict[str, list[Any]], message: str) -> ValidationError:
    """A ValueError at the recipe's `grid` key (a model validator's own errors would name the recipe)."""
    return ValidationError.from_exception_data(
        "grid", [InitErrorDetails(type="value_error", loc=("grid",), input=grid, ctx={"error": ValueError(message)})]
    )


def expand_recipes(recipes: dict[str, RecipeConfig]) -> list[Recipe]:
    """The recipes a comparison trains: one per recipe without a grid, one per grid point otherwise."""
    expanded = []
    for name, recipe in recipes.items():
        if not recipe.grid:
            expanded.append(Recipe(name, with_knobs(recipe, {})))
            continue
        for point in grid_points(recipe.grid):
            expanded.append(Recipe(f"{name}[{_label(point)}]", with_knobs(recipe, point)))
    return expanded


class ComparisonConfig(Section):
    """`alignflow compare`: several recipes trained on one validated split and measured on the same held-out pairs."""

    recipes: dict[RecipeName, RecipeConfig] = Field(
        default_factory=dict,
        description="Name -> training keys that differ from the `training` section (plus an optional `grid`).",
    )
    metric: Literal[COMPARISON_METRICS] = Field(
        "win_rate_low",
        description="What picks the best recipe (higher is better): by default the lower bound of its win-rate "
        "interval against the same opponent (the champion, else the base model), as the gate ranks.",
    )
    register_best: bool = Field(
        True, description="The best recipe goes through registry.gate (challenger, maybe champion); others stay runs."
    )
    max_parallel: int = Field(
        2,
        ge=1,
        le=64,
        description="Recipes training at once, side by side on the Ray cluster, each in its own "
        "training.scaling resources (1: one after the other, for clean timings).",
    )

    @model_validator(mode="after")
    def _names_are_unique(self) -> ComparisonConfig:
        names = [r.name for r in expand_recipes(self.recipes)]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"recipes expand to the same name twice: {', '.join(twice)}")
        return self


def check_with_trl(training: TrainingConfig, comparison: ComparisonConfig) -> None:
    """TRL's own checks (trl_problems) on the training section and on every recipe a comparison expands into;
    one ValidationError naming each rejected key. Imports TRL's config classes (seconds), so PipelineConfig
    runs it last, once the whole config is otherwise valid."""
    shared = trl_problems(training)
    errors = [
        InitErrorDetails(type="value_error", loc=("training", *where), input=value, ctx={"error": ValueError(message)})
        for where, value, message in shared
    ]
    for name, recipe in comparison.recipes.items():
        for point in grid_points(recipe.grid) if recipe.grid else [{}]:
            for where, value, message in trl_problems(with_knobs(recipe, point)):
                if (where, value, message) in shared:  # the training section's, reported once
                    continue
                if point:  # the grid point is what to fix
                    key = ".".join(where) or "training"
                    where, value, message = ("grid",), recipe.grid, f"grid point [{_label(point)}]: {key}: {message}"
                error = ValueError(message)
                errors.append(
                    InitErrorDetails(
                        type="value_error",
                        loc=("comparison", "recipes", name, *where),
                        input=value,
                        ctx={"error": error},
                    )
                )
    if errors:
        raise ValidationError.from_exception_data("PipelineConfig", errors)
