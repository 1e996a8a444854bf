"""`frugal-r1 serve`: an OpenAI-compatible chat server with DeepSeek's reasoning_content, on our engine.

    app.py      the FastAPI app: /v1/models, /v1/chat/completions (JSON and SSE), OpenAI-style errors
    schemas.py  request and response models (pydantic), following OpenAI's chat.completions
    batcher.py  the scheduler: one worker thread, continuous batching of every client's rows
    decoder.py  the decode batch rows can join (latent cache) and per-row sampling
    stream.py   incremental detokenization and the reasoning / content split
    cli.py      the command line (uvicorn)
"""

from frugal_r1.serve.batcher import Done, Failed, Handle, Scheduler, Update

__all__ = ["Scheduler", "Handle", "Update", "Done", "Failed"]
