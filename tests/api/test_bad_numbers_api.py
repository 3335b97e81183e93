"""Every number and choice an API caller can send is checked by the engine (issue 20).

Compute events skip gradio's preprocessing (``tabs.common.COMPUTE``), so a slider's bounds are only what the
engine checks. The endpoints and their parameters come from the app's own API description, so a new endpoint
or parameter is covered without editing this file: each numeric parameter (a slider, a number box, a radio or
dropdown of numbers) is sent far out of range, each other radio or dropdown a value that is not a choice, with
every other parameter at its default. The answer must be a message that names the parameter and the value
received, never the generic "Something went wrong"; then the server still gives the right answers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

IMAGE = Path(__file__).resolve().parent.parent.parent / "assets" / "examples" / "colour_fashion_64.png"
NOT_A_CHOICE = "no such choice"
GENERIC = "Something went wrong"


def kind_of(parameter: dict) -> str | None:
    """"number" for a numeric input, "choice" for a radio or dropdown of text, None for the rest."""
    schema = parameter.get("type") or {}
    choices = schema.get("enum")
    if choices and all(isinstance(c, (int, float)) for c in choices) or schema.get("type") in ("number", "integer"):
        return "number"
    return "choice" if choices else None


def default_inputs(parameters: list[dict]) -> dict:
    """Each parameter at its default; an image parameter with a default gets a small shipped picture."""
    inputs = {p["parameter_name"]: p.get("parameter_default") for p in parameters}
    for p in parameters:
        if p["component"] == "Image" and inputs[p["parameter_name"]] is not None:
            inputs[p["parameter_name"]] = handle_file(str(IMAGE))
    return inputs


def answer_to(client, endpoint: str, inputs: dict) -> str:
    try:
        client.predict(**inputs, api_name=endpoint)
    except AppError as e:
        return str(e)
    return "(no error)"


@pytest.mark.parametrize("bad", [1e12, -1e12, NOT_A_CHOICE])
def test_every_out_of_range_input_gets_a_message_that_names_it(client, bad):
    api = client.view_api(return_format="dict", print_info=False)
    wanted = "choice" if bad == NOT_A_CHOICE else "number"
    shown = NOT_A_CHOICE if bad == NOT_A_CHOICE else "1000000000000"
    checked, wrong = [], []
    for endpoint, description in api["named_endpoints"].items():
        parameters = description["parameters"]
        for p in (p for p in parameters if kind_of(p) == wanted):
            name = p["parameter_name"]
            message = answer_to(client, endpoint, {**default_inputs(parameters), name: bad})
            checked.append(f"{endpoint}({name})")
            if name.lower() not in message.lower() or shown not in message or GENERIC in message:
                wrong.append(f"{endpoint}({name}={bad!r}): {message}")
    assert len(checked) >= (10 if wanted == "choice" else 30), checked  # the walk did find the inputs
    assert not wrong, "\n".join(wrong)
    # the server is up and still gives the right answers
    gallery, caption = client.predict(source="Test image", example=3, seed=0, api_name="/forward_fashion")
    assert len(gallery) == 8 and "Trouser" in caption
    _, info = client.predict(model="SD 1.5", width=512, height=512, api_name="/unet_anatomy")
    assert info["total_parameters"] == 859_520_964
