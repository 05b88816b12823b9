"""The Alpaca prompt templates of the official code (methods.md section 8), shared by every task that uses them.

    NO_INPUT             preamble + instruction; Commonsense-15K, Code-Feedback, HumanEval, Alpaca without input
    WITH_INPUT           preamble "... paired with an input ..." + instruction + input; Commonsense-15K
    WITH_INPUT_NO_PREAMBLE  instruction + input, no preamble; Alpaca training (methods.md section 9, item 19)

Each ends with "### Response:\n", so the output follows directly.
"""

PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
PREAMBLE_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                       "context. Write a response that appropriately completes the request.")

NO_INPUT = PREAMBLE + "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
WITH_INPUT = PREAMBLE_WITH_INPUT + "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
WITH_INPUT_NO_PREAMBLE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


def prompt(instruction: str, input: str = "", *, preamble_with_input: bool = True) -> str:
    """The Alpaca prompt: NO_INPUT when `input` is blank (whitespace only counts as blank, as the official
    `input.strip()` test); otherwise WITH_INPUT, or WITH_INPUT_NO_PREAMBLE when preamble_with_input is False."""
    if not input.strip():
        return NO_INPUT.format(instruction=instruction)
    template = WITH_INPUT if preamble_with_input else WITH_INPUT_NO_PREAMBLE
    return template.format(instruction=instruction, input=input)
