"""Alias: the in-training validation callback lives in `trl_justrl.shared.validation`."""

from trl_justrl.shared.validation import ValidationCallback

__all__ = ["ValidationCallback"]
