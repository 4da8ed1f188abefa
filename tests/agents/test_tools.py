"""@tool: schemas from type hints and docstrings, argument checks, the toolbox."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel

from genforge.agents.tools import Tool, Toolbox, format_result, run_tool, tool
from genforge.errors import GenforgeError


@tool
def book_flight(
    origin: str, destination: str, seats: int = 1, cabin: Literal["economy", "business"] = "economy"
) -> str:
    """Book a flight between two airports.

    Args:
        origin: IATA code of the departure airport.
        destination: IATA code of the arrival airport.
        seats: how many seats.
        cabin: the cabin class.
    """
    return f"{seats} {cabin} {origin}->{destination}"


def test_the_schema_comes_from_the_hints_and_the_docstring():
    assert isinstance(book_flight, Tool)
    assert book_flight.name == "book_flight"
    assert book_flight.description == "Book a flight between two airports."
    p = book_flight.parameters
    assert p["type"] == "object"
    assert p["required"] == ["origin", "destination"]
    assert p["properties"]["origin"] == {
        "type": "string",
        "description": "IATA code of the departure airport.",
    }
    assert p["properties"]["seats"]["type"] == "integer"
    assert p["properties"]["seats"]["default"] == 1
    assert p["properties"]["cabin"]["enum"] == ["economy", "business"]
    assert "title" not in str(p)  # pydantic's titles are left out: tokens for nothing
    spec = book_flight.spec()
    assert spec["type"] == "function" and spec["function"]["name"] == "book_flight"


def test_arguments_are_checked_and_coerced_before_the_function_runs():
    assert book_flight(origin="OSL", destination="BER", seats="2") == "2 economy OSL->BER"
    bad = run_tool(book_flight, {"origin": "OSL", "destination": "BER", "cabin": "first"})
    assert bad.error and "cabin" in bad.output
    missing = run_tool(book_flight, {"origin": "OSL"})
    assert missing.error and "destination" in missing.output
    not_object = run_tool(book_flight, ["OSL"])
    assert not_object.error


def test_a_tool_s_exception_becomes_an_error_result():
    @tool
    def divide(a: float, b: float) -> float:
        """Divide a by b."""
        return a / b

    ok = run_tool(divide, {"a": 1, "b": 4})
    assert not ok.error and ok.output == "0.25"
    failed = run_tool(divide, {"a": 1, "b": 0})
    assert failed.error and "ZeroDivisionError" in failed.output


class Item(BaseModel):
    name: str
    quantity: int


def test_nested_models_and_lists_are_described():
    @tool(name="order", dangerous=True)
    def place_order(items: list[Item], note: str | None = None) -> int:
        """Order items."""
        return sum(i.quantity for i in items)

    assert place_order.name == "order" and place_order.dangerous
    assert place_order(items=[{"name": "a", "quantity": 2}, {"name": "b", "quantity": 3}]) == 5
    assert "$defs" in place_order.parameters or "items" in str(place_order.parameters)


def test_untyped_or_variadic_functions_are_refused():
    def untyped(x):
        """No hints."""

    def variadic(*names: str):
        """Variadic."""

    with pytest.raises(GenforgeError, match="type hint"):
        tool(untyped)
    with pytest.raises(GenforgeError, match=r"\*args"):
        tool(variadic)


def test_the_toolbox_refuses_duplicate_and_malformed_names():
    box = Toolbox([book_flight])
    assert "book_flight" in box and box.names == ["book_flight"]
    with pytest.raises(GenforgeError, match="two tools"):
        box.add(book_flight)
    with pytest.raises(GenforgeError, match="letters"):
        Toolbox([Tool("bad name!", "x", {"type": "object"}, lambda: None)])

    def plain(x: int) -> int:
        """A plain function becomes a tool when added."""
        return x + 1

    assert Toolbox([plain]).get("plain")(x=1) == 2


def test_results_are_text_and_cut_to_a_limit():
    assert format_result({"a": [1, 2]}) == '{"a": [1, 2]}'
    long = format_result("x" * 5000, limit=100)
    assert long.startswith("x" * 100) and "4900 more characters" in long
