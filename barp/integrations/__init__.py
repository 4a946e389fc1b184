"""barp inside other tools: adapters that put a trained router where users already send their LLM calls.

Each adapter is an optional extra (``pip install 'barp[litellm]'``) and imports its tool only when it is imported.
"""
