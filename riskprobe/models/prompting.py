"""Turn an item's question into the text a model sees.

Models with a chat template get it, with a short-answer system message; base models get a few-shot
``Q:/A:`` prompt and stop at the first newline. The rendered text and its stop strings are returned
together so that generation, teacher forcing and scoring all see exactly the same input.
"""

from __future__ import annotations

from dataclasses import dataclass

SYSTEM = {
    "alias": "Answer the question with the answer only: a name, a word or a short phrase. No sentence, no explanation.",
    "number": "Solve the problem. Reply with the final number only.",
    "yesno": "Answer the question with yes or no only.",
}

FEW_SHOT = {
    "alias": [("What is the capital of Italy?", "Rome"),
              ("Who wrote the novel Pride and Prejudice?", "Jane Austen"),
              ("Which gas do plants absorb from the air for photosynthesis?", "Carbon dioxide")],
    "number": [("Tom has 3 apples and buys 4 more. How many apples does he have now?", "7"),
               ("A box holds 6 eggs. How many eggs are in 5 boxes?", "30")],
    "yesno": [("Is the Sun a star?", "yes"), ("Can a fish climb a ladder?", "no")],
}


@dataclass(frozen=True)
class RenderedPrompt:
    """The exact input text, whether it already carries special tokens, and where generation stops."""

    text: str
    style: str  # "chat" | "fewshot"
    add_special_tokens: bool
    stop_strings: tuple[str, ...]


def prompt_style(tokenizer, style: str = "auto") -> str:
    """``chat`` where the tokenizer has a chat template, else ``fewshot`` (``style`` forces one)."""
    if style not in ("auto", "chat", "fewshot"):
        raise ValueError(f"unknown prompt style {style!r}")
    if style != "auto":
        return style
    return "chat" if getattr(tokenizer, "chat_template", None) else "fewshot"


def render(tokenizer, question: str, answer_kind: str = "alias", style: str = "auto") -> RenderedPrompt:
    """Render ``question`` for ``tokenizer``'s model (see module doc)."""
    kind = answer_kind if answer_kind in SYSTEM else "alias"
    style = prompt_style(tokenizer, style)
    if style == "chat":
        msgs = [{"role": "system", "content": SYSTEM[kind]}, {"role": "user", "content": question.strip()}]
        text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return RenderedPrompt(text, "chat", False, ("\n",))
    shots = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in FEW_SHOT[kind])
    return RenderedPrompt(f"{shots}Q: {question.strip()}\nA:", "fewshot", True, ("\n",))
