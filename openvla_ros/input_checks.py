"""Input errors apart from backend faults: what a rejected instruction or image is, and the checks
that say so.

A rejection is the caller's input the model cannot take (an instruction that is empty, has control
characters or needs more prompt tokens than the export holds; an image of the wrong shape). It is
reported, counted, and never counts toward a policy node's `max_consecutive_errors`, which only
backend and runtime faults do. `InputRejected` subclasses ValueError, so callers that treat every
ValueError as bad input (the CLI) keep doing so.
"""
from __future__ import annotations

import unicodedata

# The policy node's max_instruction_chars default: it bounds what an instruction callback tokenizes.
DEFAULT_MAX_INSTRUCTION_CHARS = 512


class InputRejected(ValueError):
    """Input the model cannot take; `kind` names which input ("instruction" or "image")."""

    kind = "input"


class InstructionRejected(InputRejected):
    kind = "instruction"


class ImageRejected(InputRejected):
    kind = "image"


def check_instruction_text(instruction: object, max_chars: int | None = None) -> str:
    """Raise InstructionRejected unless `instruction` is visible text without control characters
    (and at most `max_chars` characters); returns it unchanged.

    Control characters (Unicode category Cc: NUL, tab, line breaks, ESC, DEL, C1) are rejected, not
    cleaned: the prompt template puts the instruction on one line before "\\nOut:", so a line break
    would change the prompt's structure, and NUL or ESC point at a corrupt or binary publisher.
    Any other Unicode (accents, CJK, emoji, zero-width joiners) is instruction text.
    """
    if not isinstance(instruction, str):
        raise InstructionRejected(f"instruction must be a string, got {type(instruction).__name__}")
    # Length first: it bounds the cost of everything after it (and of tokenizing) for a 1 MB message.
    if max_chars is not None and len(instruction) > max_chars:
        raise InstructionRejected(f"instruction has {len(instruction)} characters; max_instruction_chars is "
                                  f"{max_chars}")
    if not instruction.strip():
        raise InstructionRejected("instruction is empty or whitespace only; expected a task such as "
                                  "'pick up the bowl'")
    for index, char in enumerate(instruction):
        if unicodedata.category(char) == "Cc":
            raise InstructionRejected(
                f"instruction has control character U+{ord(char):04X} at index {index}; "
                "expected text on one line without control characters")
    return instruction


def check_prompt_fits(text_tokens: int, max_text_tokens: int) -> None:
    """Raise InstructionRejected when a prompt of `text_tokens` tokens after BOS (the prompt template
    included) does not fit an export holding `max_text_tokens`."""
    if text_tokens > max_text_tokens:
        raise InstructionRejected(
            f"prompt has {text_tokens} text tokens after BOS but this export holds at most {max_text_tokens}; "
            f"shorten the instruction or re-export the model with "
            f"`openvla-ros export --max-text-tokens {text_tokens}` (or more)")
