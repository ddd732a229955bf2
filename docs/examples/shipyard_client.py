import numpy as np
from sklearn.datasets import load_digits

from shipyard.client import Client

pixels = (load_digits().images[:4, None] / 16).astype(np.float32)
for url in ("http://127.0.0.1:8000", "grpc://127.0.0.1:8001"):
    with Client(url) as client:  # Client(url, api_key=...) when the server runs with --auth
        print(client.infer("digits", pixels)["logits"].argmax(1))  # [0 1 2 3]
