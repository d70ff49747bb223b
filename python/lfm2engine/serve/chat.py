"""Chat templates: the checkpoint's `chat_template` from tokenizer_config.json, rendered with
Jinja2 the way transformers' apply_chat_template does.

A sandboxed, immutable Jinja2 environment (templates come with checkpoints and are not trusted),
trim_blocks and lstrip_blocks on, the loop-controls extension, a `tojson` filter that keeps
non-ASCII text, and the globals templates expect: raise_exception(msg) and strftime_now(fmt).
Variables: messages, add_generation_prompt, bos_token, eos_token (strings from
tokenizer_config.json, as transformers passes them). The rendered text already holds any BOS
the template writes, so it is tokenized without adding special tokens.
"""

from __future__ import annotations

import json
import os
from datetime import datetime

from ..errors import ConfigError, InputError


def _token_str(v) -> str:
    """tokenizer_config.json writes special tokens as strings or as {"content": ...} objects."""
    if isinstance(v, dict):
        v = v.get("content", "")
    return v if isinstance(v, str) else ""


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self.template = env.from_string(source)
        except jinja2.exceptions.TemplateError as e:
            raise ConfigError(f"chat_template does not compile: {e}") from None
        self.bos_token, self.eos_token = bos_token, eos_token
        self._errors = jinja2.exceptions.TemplateError

    @classmethod
    def from_model_dir(cls, model_dir: str) -> "ChatTemplate | None":
        """The template of model_dir/tokenizer_config.json (a string, or the 'default' entry of a
        list of named templates); None when there is none."""
        path = os.path.join(model_dir, "tokenizer_config.json")
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                cfg = json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: cannot read ({e})") from None
        tpl = cfg.get("chat_template") if isinstance(cfg, dict) else None
        if isinstance(tpl, list):
            named = {t.get("name"): t.get("template") for t in tpl if isinstance(t, dict)}
            tpl = named.get("default")
        if tpl is None:
            return None
        if not isinstance(tpl, str):
            raise ConfigError(f"{path}: chat_template must be a string or a list of named templates")
        return cls(tpl, _token_str(cfg.get("bos_token")), _token_str(cfg.get("eos_token")))

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """messages ({"role", "content"} dicts) -> prompt text; InputError when the template
        rejects them (raise_exception) or fails."""
        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        bos_token=self.bos_token, eos_token=self.eos_token)
        except self._errors as e:
            raise InputError(f"the chat template rejected the messages: {e}") from None
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise InputError(f"the chat template failed on the messages: {type(e).__name__}: {e}") from None
