"""Problems and helpers shared by the reward tests."""

ADD_STDIN = {
    "inputs": ["1 2\n", "3 4\n", "10 20\n", "5 5\n"],
    "outputs": ["3\n", "7\n", "30\n", "10\n"],
}


def fenced(code: str) -> str:
    """A completion holding ``code`` in a python fence, with prose around it."""
    return f"Here is my solution.\n```python\n{code}\n```\nIt reads the input and prints."
