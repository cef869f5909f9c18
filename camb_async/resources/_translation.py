"""``client.translation``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._models import DurationHint, TranslationResult
from ..polling._handle import TaskHandle
from ._args import (
    LanguageArg,
    _check_flag,
    _opt_int,
    _opt_int_list,
    _project_fields,
    _put,
    _required_str,
    check_language,
)
from ._base import _ROUTES, TaskResource, _Body, _Headers, _Query

__all__ = ["TranslationResource"]


class TranslationResource(TaskResource[TranslationResult]):
    """``client.translation``: translate batches of texts."""

    __slots__ = ()

    async def create(
        self,
        *,
        texts: Sequence[str],
        source_language: LanguageArg,
        target_language: LanguageArg,
        age: int | None = None,
        formality: int | None = None,
        gender: int | None = None,
        chosen_dictionaries: Sequence[int] | None = None,
        project_name: str | None = None,
        project_description: str | None = None,
        folder_id: int | None = None,
        retry_unsafe: bool = False,
        hint: DurationHint | float | None = None,
        extra_headers: _Headers = None,
        extra_query: _Query = None,
        extra_body: _Body = None,
    ) -> TaskHandle[TranslationResult]:
        """``POST /translate``: translate ``texts``; returns a handle.

        ``target_language`` must be a concrete language (not ``"auto"``). The handle's
        duration hint is the texts' total length in characters unless ``hint`` is given.
        """
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
            raise TypeError("texts must be a list of strings, not a single string")
        if not texts:
            raise ValueError("texts must not be empty")
        body: dict[str, Any] = {
            "texts": [_required_str(t, "texts item", allow_blank=True) for t in texts],
            "source_language": check_language(source_language, "source_language", allow_auto=True),
            "target_language": check_language(target_language, "target_language", allow_auto=False),
        }
        _put(body, "age", _opt_int(age, "age"))
        _put(body, "formality", _opt_int(formality, "formality"))
        _put(body, "gender", _opt_int(gender, "gender"))
        _put(body, "chosen_dictionaries", _opt_int_list(chosen_dictionaries, "chosen_dictionaries"))
        body.update(_project_fields(project_name, project_description, folder_id))
        _check_flag(retry_unsafe)
        chars = sum(len(t) for t in body["texts"])
        if hint is None and chars:
            hint = DurationHint(chars, "chars")
        return await self._create(
            _ROUTES[self.kind].create_path,
            json_body=body,
            retry_unsafe=retry_unsafe,
            hint=hint,
            extra_headers=extra_headers,
            extra_query=extra_query,
            extra_body=extra_body,
        )
