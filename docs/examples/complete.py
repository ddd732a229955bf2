from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
completion = client.completions.create(
    model="code-lm", prompt="def __init__(self, ", max_tokens=40, temperature=0
)
print(completion.choices[0].text)
