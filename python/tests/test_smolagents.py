"""terrarium.smolagents.TerrariumExecutor as smolagents' code executor.

The ``TestExecutorContract`` tests are adapted from smolagents' own executor tests
(``tests/test_remote_executors.py``, class ``CommonDockerExecutorIntegration``, at
commit e3a5b8994b301983b91c0325546e9dc82eab8cf0 of huggingface/smolagents),
Copyright the HuggingFace team, licensed under the Apache License, Version 2.0
(https://www.apache.org/licenses/LICENSE-2.0). Changes: they run against
TerrariumExecutor; ``numpy`` in the state test became ``math`` (the interpreter
tier has no numpy; the docker tier's image has, see test_pandas.py); the image
test is left out (PIL objects are not JSON, and Terrarium's tools and answers cross
the wall as JSON); an error test and a variables test were added.
"""

from __future__ import annotations

from textwrap import dedent

import pytest
from smolagents import CodeAgent
from smolagents.default_tools import FinalAnswerTool
from smolagents.models import ChatMessage, MessageRole, Model
from smolagents.tools import tool
from smolagents.utils import AgentError

from terrarium.smolagents import TerrariumExecutor


@pytest.fixture
def executor(audit):
    ex = TerrariumExecutor(audit=audit)
    yield ex
    ex.cleanup()


class TestExecutorContract:
    @pytest.fixture(autouse=True)
    def set_executor(self, executor):
        self.executor = executor

    def test_state_persistence(self):
        """Variables and imports from one snippet persist in the next."""
        self.executor("import math; a = 2")
        code_output = self.executor("print(math.sqrt(a))")
        assert "1.41421" in code_output.logs

    def test_execute_output(self):
        self.executor.send_tools({"final_answer": FinalAnswerTool()})
        code_output = self.executor('final_answer("This is the final answer")')
        assert code_output.output == "This is the final answer"

    def test_execute_multiline_output(self):
        self.executor.send_tools({"final_answer": FinalAnswerTool()})
        code_output = self.executor('result = "This is the final answer"\nfinal_answer(result)')
        assert code_output.output == "This is the final answer"

    def test_syntax_error_handling(self):
        with pytest.raises(AgentError) as exception_info:
            self.executor('print("Missing Parenthesis')
        assert "SyntaxError" in str(exception_info.value)

    def test_runtime_error_handling(self):
        with pytest.raises(AgentError) as exception_info:
            self.executor("print('so far')\n1 / 0")
        assert "ZeroDivisionError" in str(exception_info.value)
        assert "so far" in str(exception_info.value)

    @pytest.mark.parametrize(
        "code_action, expected_result",
        [
            (
                dedent('''
                    final_answer("""This is
                    a multiline
                    final answer""")
                '''),
                "This is\na multiline\nfinal answer",
            ),
            (
                dedent("""
                    text = '''Text containing
                    final_answer(5)
                    '''
                    final_answer(text)
                """),
                "Text containing\nfinal_answer(5)\n",
            ),
            (
                dedent("""
                    num = 2
                    if num == 1:
                        final_answer("One")
                    elif num == 2:
                        final_answer("Two")
                """),
                "Two",
            ),
        ],
    )
    def test_final_answer_patterns(self, code_action, expected_result):
        self.executor.send_tools({"final_answer": FinalAnswerTool()})
        code_output = self.executor(code_action)
        assert code_output.is_final_answer is True
        assert code_output.output == expected_result

    def test_final_answer_is_not_caught_by_except_exception(self):
        self.executor.send_tools({"final_answer": FinalAnswerTool()})
        code_output = self.executor("try:\n    final_answer(1)\nexcept Exception:\n    pass\nprint('after')")
        assert code_output.is_final_answer is True and code_output.output == 1
        assert "after" not in code_output.logs

    def test_custom_final_answer(self):
        class CustomFinalAnswerTool(FinalAnswerTool):
            def forward(self, answer: str) -> str:
                return "CUSTOM" + answer

        self.executor.send_tools({"final_answer": CustomFinalAnswerTool()})
        code_output = self.executor('final_answer(answer="_answer")')
        assert code_output.is_final_answer is True
        assert code_output.output == "CUSTOM_answer"

    def test_custom_final_answer_with_custom_inputs(self):
        class CustomFinalAnswerToolWithCustomInputs(FinalAnswerTool):
            inputs = {
                "answer1": {"type": "string", "description": "First part of the answer."},
                "answer2": {"type": "string", "description": "Second part of the answer."},
            }

            def forward(self, answer1: str, answer2: str) -> str:
                return answer1 + "CUSTOM" + answer2

        self.executor.send_tools({"final_answer": CustomFinalAnswerToolWithCustomInputs()})
        code_output = self.executor(
            dedent("""
                final_answer(
                    answer1="answer1_",
                    answer2="_answer2"
                )
            """)
        )
        assert code_output.is_final_answer is True
        assert code_output.output == "answer1_CUSTOM_answer2"

    def test_send_variables(self):
        self.executor.send_variables({"numbers": [1, 2, 3], "label": "sum"})
        code_output = self.executor("f'{label}={sum(numbers)}'")
        assert code_output.output == "sum=6" and code_output.is_final_answer is False

    def test_the_code_cannot_reach_the_host(self):
        with pytest.raises(AgentError, match="denied|not allowed|ImportDenied"):
            self.executor("import os\nos.listdir('/')")


@tool
def multiply(a: float, b: float) -> float:
    """Multiplies two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    multiply.calls.append((a, b))
    return a * b


multiply.calls = []  # type: ignore[attr-defined]


class ScriptedModel(Model):
    """A model that answers with fixed code: no network, no LLM."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def generate(self, messages, stop_sequences=None, response_format=None, tools_to_call_from=None, **kwargs):
        self.steps += 1
        if self.steps == 1:
            code = "product = multiply(6, 7)\nprint('product is', product)"
        else:
            code = "final_answer(product)"
        return ChatMessage(role=MessageRole.ASSISTANT, content=f"Thought: step {self.steps}.\n<code>\n{code}\n</code>")


def test_a_code_agent_calls_a_tool_through_terrarium(audit) -> None:
    multiply.calls.clear()
    executor = TerrariumExecutor(audit=audit)
    agent = CodeAgent(tools=[multiply], model=ScriptedModel(), executor=executor, max_steps=4)
    try:
        answer = agent.run("What is 6 times 7?")
    finally:
        executor.cleanup()
    assert answer == 42
    assert multiply.calls == [(6, 7)], "the tool ran in this process, called from the sandbox"
    observations = [getattr(s, "observations", None) or "" for s in agent.memory.steps]
    assert any("product is 42" in o for o in observations), observations


def test_a_late_final_answer_does_not_end_a_later_step(audit) -> None:
    """Found by an outside review: a final answer that passed its timeout in one
    step was reported as the next step's."""
    import time

    class SlowFinalAnswer(FinalAnswerTool):
        def forward(self, answer):
            time.sleep(1.5)
            return answer

    executor = TerrariumExecutor(audit=audit, tool_timeout=0.5)
    try:
        executor.send_tools({"final_answer": SlowFinalAnswer()})
        with pytest.raises(AgentError):
            executor("final_answer('from step 1')")
        # The late answer lands while this step runs.
        out = executor("import time\ntime.sleep(2)\n2 + 2")
        assert (out.is_final_answer, out.output) == (False, 4)
    finally:
        executor.cleanup()


def test_a_tool_sent_again_under_its_name_replaces_the_old_one(executor) -> None:
    @tool
    def search(query: str) -> str:
        """Searches.

        Args:
            query: What to search for.
        """
        return "old:" + query

    @tool
    def search2(query: str) -> str:
        """Searches.

        Args:
            query: What to search for.
        """
        return "new:" + query

    executor.send_tools({"search": search})
    assert executor("search('x')").output == "old:x"
    executor.send_tools({"search": search2})
    assert executor("search('x')").output == "new:x"
