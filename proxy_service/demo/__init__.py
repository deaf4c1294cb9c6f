"""The demo and the test oracle, kept apart from the product: the simulated Gemini API (`fake_upstream.py`, which
imports nothing from the product so it can judge it), realistic client traffic (`traffic.py`) and the demo's keys
and scenario (`scenario.py`)."""
