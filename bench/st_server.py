"""The sentence-transformers peer of bench/serve.py: the minimal FastAPI server a user would write
instead of running `bgeort serve`. One `model.encode` per request, the OpenAI response shape, under
a lock so concurrent requests do not run two PyTorch pools on the same cores (FastAPI runs a sync
route in its thread pool; without the lock each request would start its own `threads` threads).

    python bench/st_server.py SRC_FOLDER --port P [--threads 2]
"""


import argparse
import threading


def build_app(folder: str, *, threads: int):
    import torch
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(folder, device="cpu", local_files_only=True)
    model.encode(["warm up"])
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = await request.json()
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        with lock:  # blocks the event loop: one encode at a time, as an `async def` route gives
            vectors = model.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)
            tokens = int(model.tokenize(texts)["attention_mask"].sum())
        data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
        return JSONResponse({"object": "list", "data": data, "model": body.get("model", "st"),
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import uvicorn

    app = build_app(args.folder, threads=args.threads)
    print(f"st server on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
