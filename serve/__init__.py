"""The gateway: an OpenAI-compatible front door over vLLM / llama.cpp engines, with verified hot-swap.

    from serve.app import create_app          # FastAPI app (routes/), service in gateway.py
    from serve.swap import Deployer, State    # the hot-swap state machine
    appliance serve | deploy | rollback | pull  (serve/cli.py)

Nothing here imports torch or vLLM: engines run as subprocesses (engines.py).
"""
