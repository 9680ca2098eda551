"""Language models: the interface every backend implements (base.py) and the engines behind it:
transformers with a prefix cache, an inference server over HTTP, a fake for tests, and a shared
handle for runs on one loaded model. Nothing here imports the rest of the engine."""
