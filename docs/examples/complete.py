from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
completion = client.completions.create(
    model="code-lm", prompt="def fibonacci(n):\n", max_tokens=48, temperature=0
)
print(completion.choices[0].text)
