"""`training.chat_template`: a chat template that replaces the base model's own, read and checked when the config loads.

A profile gives Jinja text inline, or the path of a file holding it (a relative path is read from the profile
file's folder; on the command line, or in a profile with no folder of its own, from the working directory). Either
way the config holds the text itself (`ChatTemplate`), so the resolved config is whole wherever it travels (a Ray
worker, a Prefect parameter, `config/resolved.yaml`) and its hash changes with the template. Where the text came
from is kept for lineage (`source`).

Imports jinja2 only when a template is set, to check it: a config without one loads as fast as before.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from alignflow.conf.base import Section

INLINE = "profile:inline"  # the source of a template written into the profile itself
FROM_FILE = "profile:"  # the source of a template read from a file: `profile:<absolute path>`
MODEL = "model"  # lineage's source when no template is set: the model's own


def is_inline(value: str) -> bool:
    """Jinja text rather than a file's path: every useful template holds a tag or an expression, and no path does."""
    return "{{" in value or "{%" in value


def anchored(value: Any, folder: Path) -> Any:
    """A relative template path as the path it names from `folder` (the profile file's); anything else as it is."""
    if not isinstance(value, str) or is_inline(value) or not value.strip():
        return value
    path = Path(value.strip()).expanduser()
    return value if path.is_absolute() else str(folder / path)


def read(value: str) -> dict[str, str]:
    """A `ChatTemplate`'s fields from what a profile gives: inline text, or a file's path (read now)."""
    if is_inline(value):
        return {"source": INLINE, "text": value}
    path = Path(value.strip()).expanduser().resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(
            f"{path}: no such file (inline Jinja text holds a {{% tag %}} or a {{{{ expression }}}})"
        ) from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a template file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text (UTF-8) file") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    return {"source": f"{FROM_FILE}{path}", "text": text}


def check_jinja(text: str) -> str | None:
    """None when `text` compiles as transformers compiles chat templates and reads `messages`, else why not."""
    import jinja2
    import jinja2.ext
    import jinja2.meta
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        """transformers' `{% generation %}...{% endgeneration %}` (assistant-token masks), parsed as a plain block."""

        tags = {"generation"}

        def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    # The environment transformers renders chat templates in (utils/chat_template_utils.py), so that what passes
    # here compiles there: its unknown filters and tests fail at compile time too, not at the first conversation.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    try:
        env.from_string(text)
        names = jinja2.meta.find_undeclared_variables(env.parse(text))
    except jinja2.TemplateSyntaxError as exc:
        return f"not a valid Jinja template: line {exc.lineno}: {exc.message}"
    if "messages" not in names:
        return "the template never reads `messages` (the conversation it formats)"
    return None


class ChatTemplate(Section):
    """The chat template every stage applies in place of the base model's own, and where it was read from."""

    source: str = Field(description=f"`{FROM_FILE}<file>` or `{INLINE}`.")
    text: str = Field(min_length=1, description="The Jinja text.")

    @model_validator(mode="before")
    @classmethod
    def _read_a_path_or_text(cls, data: Any) -> Any:
        """A profile's string: inline Jinja, or a file's path, read now (a dict: a resolved config's, kept)."""
        return read(data) if isinstance(data, str) else data

    @model_validator(mode="after")
    def _compiles(self) -> ChatTemplate:
        problem = check_jinja(self.text)
        if problem:
            where = self.source.removeprefix(FROM_FILE) if self.source != INLINE else "inline template"
            raise ValueError(f"{where}: {problem}")
        return self

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def lineage(template: ChatTemplate | None) -> dict[str, str]:
    """The MLflow tags that say which chat template a model was trained and evaluated with (the text itself is an
    artifact: MLflow params and tags are short)."""
    if template is None:
        return {"chat_template_source": MODEL}
    return {"chat_template_source": template.source, "chat_template_sha256": template.sha256}
