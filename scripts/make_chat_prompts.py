"""Write data/chat_prompts.jsonl: varied chat prompts built from templates.

They are the prompts SmolLM2-135M-Instruct answers to make its own Medusa
training data (self-distillation). Deliberately not MT-bench questions.
Run: python scripts/make_chat_prompts.py
"""

import json
import random
from pathlib import Path

TOPICS = [
    "photosynthesis", "the water cycle", "black holes", "volcanoes", "the immune system",
    "gravity", "electricity", "the moon", "rainbows", "earthquakes", "vaccines", "DNA",
    "the internet", "solar panels", "recycling", "bees", "the Roman Empire", "the printing press",
    "climate change", "the stock market", "inflation", "machine learning", "sleep", "coffee",
    "the human heart", "dinosaurs", "the ocean tides", "friction", "magnets", "clouds",
    "the French Revolution", "democracy", "batteries", "airplanes", "bread baking", "chess",
    "the Olympic Games", "music theory", "meditation", "compound interest",
]
SKILLS = [
    "learn a new language", "cook rice", "save money", "study for an exam", "start running",
    "write a good essay", "make new friends", "grow tomatoes", "improve my handwriting",
    "fall asleep faster", "prepare for a job interview", "learn to play guitar",
    "organize my desk", "reduce stress", "train a puppy", "plan a trip", "read more books",
    "give a presentation", "keep a plant alive", "wake up early",
]
THINGS = [
    "the sea", "autumn leaves", "a cat", "the city at night", "a rainy day", "mountains",
    "friendship", "an old clock", "the stars", "a summer garden", "a library", "snow",
]
PAIRS = [
    ("cats", "dogs"), ("tea", "coffee"), ("trains", "planes"), ("books", "movies"),
    ("summer", "winter"), ("Python", "JavaScript"), ("renting", "buying a house"),
    ("walking", "cycling"), ("email", "phone calls"), ("city life", "country life"),
]
CODE_TASKS = [
    "reverses a string", "checks if a number is prime", "counts the vowels in a word",
    "returns the largest item of a list", "computes the factorial of n",
    "removes duplicates from a list", "checks if a word is a palindrome",
    "sums the even numbers in a list", "converts Celsius to Fahrenheit",
    "returns the n-th Fibonacci number", "sorts a list of names", "counts words in a sentence",
]
NAMES = ["Anna", "Ben", "Carlos", "Dana", "Emma", "Farid", "Grace", "Hiro", "Ivy", "Jonas"]

TEMPLATES = [
    ("topic", "Explain {x} in simple terms."),
    ("topic", "What is {x}?"),
    ("topic", "Give me three interesting facts about {x}."),
    ("topic", "Why is {x} important?"),
    ("topic", "Write a short paragraph about {x} for a ten-year-old."),
    ("skill", "How can I {x}?"),
    ("skill", "Give me five tips to {x}."),
    ("skill", "What is the best way to {x}?"),
    ("thing", "Write a short poem about {x}."),
    ("thing", "Describe {x} in a few sentences."),
    ("pair", "What are the differences between {x} and {y}?"),
    ("pair", "Which is better, {x} or {y}? Give reasons."),
    ("code", "Write a Python function that {x}."),
    ("name", "Write a short email to my friend {x} inviting them to dinner."),
    ("name", "Write a birthday message for my colleague {x}."),
    ("math", "If I have {a} apples and buy {b} more, how many apples do I have?"),
    ("math", "What is {a} times {b}?"),
    ("math", "A train travels {a} km in {b} hours. What is its average speed?"),
]


def make_prompts(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    prompts = []
    for kind, template in TEMPLATES:
        if kind == "topic":
            prompts += [template.format(x=x) for x in TOPICS]
        elif kind == "skill":
            prompts += [template.format(x=x) for x in SKILLS]
        elif kind == "thing":
            prompts += [template.format(x=x) for x in THINGS]
        elif kind == "pair":
            prompts += [template.format(x=x, y=y) for x, y in PAIRS]
        elif kind == "code":
            prompts += [template.format(x=x) for x in CODE_TASKS]
        elif kind == "name":
            prompts += [template.format(x=x) for x in NAMES]
        else:
            prompts += [
                template.format(a=rng.randint(2, 60), b=rng.randint(2, 12)) for _ in range(8)
            ]
    unique = sorted(set(prompts))
    rng.shuffle(unique)
    return unique


if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "data" / "chat_prompts.jsonl"
    prompts = make_prompts()
    out.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    print(f"wrote {len(prompts)} prompts to {out}")
