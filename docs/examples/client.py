import numpy as np
import tritonclient.http as http
from sklearn.datasets import load_digits

client = http.InferenceServerClient("127.0.0.1:8000")
x = http.InferInput("pixels", [4, 1, 8, 8], "FP32")
x.set_data_from_numpy((load_digits().images[:4, None] / 16).astype(np.float32))
print(client.infer("digits", [x]).as_numpy("logits").argmax(1))  # [0 1 2 3]
