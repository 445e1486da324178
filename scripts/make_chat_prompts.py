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
    "the solar system", "evolution", "the human brain", "photosynthesis in algae", "tornadoes",
    "the pyramids of Egypt", "the Great Wall of China", "the Renaissance", "World War I",
    "the industrial revolution", "electric cars", "wind turbines", "nuclear energy", "the atom",
    "light", "sound waves", "the seasons", "deserts", "rainforests", "coral reefs", "glaciers",
    "honey", "chocolate", "cheese making", "the calendar", "time zones", "money", "taxes",
    "banks", "supply and demand", "the periodic table", "acids and bases", "the speed of light",
    "computers", "smartphones", "video games", "social media", "passwords", "cloud computing",
    "robots", "3D printing", "the microscope", "telescopes", "satellites", "the Mars rovers",
    "vitamins", "exercise", "healthy eating", "the digestive system", "bones", "muscles",
    "bacteria", "viruses", "antibiotics", "allergies", "the common cold", "migrating birds",
    "whales", "elephants", "ants", "spiders", "penguins", "wolves", "trees", "mushrooms",
    "the alphabet", "poetry", "Shakespeare", "libraries", "museums", "jazz", "the piano",
    "painting", "photography", "architecture", "bridges", "skyscrapers", "roads", "maps",
    "the compass", "volunteering", "teamwork", "leadership", "habits", "procrastination",
]
SKILLS = [
    "learn a new language", "cook rice", "save money", "study for an exam", "start running",
    "write a good essay", "make new friends", "grow tomatoes", "improve my handwriting",
    "fall asleep faster", "prepare for a job interview", "learn to play guitar",
    "organize my desk", "reduce stress", "train a puppy", "plan a trip", "read more books",
    "give a presentation", "keep a plant alive", "wake up early",
    "learn to code", "drink more water", "stop checking my phone", "be more productive",
    "bake cookies", "make a budget", "clean my kitchen", "write a resume", "ask for a raise",
    "learn to swim", "draw better", "remember names", "take better photos", "stay motivated",
    "learn math", "make pancakes", "start a garden", "practice mindfulness", "learn to cook",
    "care for a cat", "paint a room", "speak in public", "write a story", "learn history",
    "memorize a speech", "get better at chess", "save energy at home", "travel on a budget",
]
THINGS = [
    "the sea", "autumn leaves", "a cat", "the city at night", "a rainy day", "mountains",
    "friendship", "an old clock", "the stars", "a summer garden", "a library", "snow",
    "the wind", "a lighthouse", "a forest", "the morning sun", "a river", "an old house",
    "the desert", "a quiet beach", "a busy market", "the first day of school", "a storm",
    "a mountain lake", "a dog", "the moon", "a candle", "a train journey", "spring flowers",
]
PAIRS = [
    ("cats", "dogs"), ("tea", "coffee"), ("trains", "planes"), ("books", "movies"),
    ("summer", "winter"), ("Python", "JavaScript"), ("renting", "buying a house"),
    ("walking", "cycling"), ("email", "phone calls"), ("city life", "country life"),
    ("the sun", "the moon"), ("rice", "pasta"), ("reading", "listening to podcasts"),
    ("laptops", "tablets"), ("running", "swimming"), ("oceans", "lakes"), ("bees", "wasps"),
    ("weather", "climate"), ("viruses", "bacteria"), ("saving", "investing"),
    ("solar power", "wind power"), ("frogs", "toads"), ("working from home", "working in an office"),
]
CODE_TASKS = [
    "reverses a string", "checks if a number is prime", "counts the vowels in a word",
    "returns the largest item of a list", "computes the factorial of n",
    "removes duplicates from a list", "checks if a word is a palindrome",
    "sums the even numbers in a list", "converts Celsius to Fahrenheit",
    "returns the n-th Fibonacci number", "sorts a list of names", "counts words in a sentence",
    "finds the smallest number in a list", "checks if a year is a leap year",
    "returns the average of a list of numbers", "capitalizes every word in a sentence",
    "merges two sorted lists", "counts how often each letter appears in a string",
    "checks if two words are anagrams", "converts a number to binary",
    "returns the sum of the digits of a number", "finds the second largest number in a list",
    "reads a file and counts its lines", "flattens a list of lists",
]
NAMES = ["Anna", "Ben", "Carlos", "Dana", "Emma", "Farid", "Grace", "Hiro", "Ivy", "Jonas",
         "Kate", "Liam", "Maya", "Noah", "Olga", "Paul", "Rosa", "Sam", "Tara", "Victor"]

TEMPLATES = [
    ("topic", "Explain {x} in simple terms."),
    ("topic", "What is {x}?"),
    ("topic", "Give me three interesting facts about {x}."),
    ("topic", "Why is {x} important?"),
    ("topic", "Write a short paragraph about {x} for a ten-year-old."),
    ("topic", "Tell me about {x}."),
    ("topic", "What are the main ideas behind {x}?"),
    ("topic", "Summarize what you know about {x} in one paragraph."),
    ("topic", "Can you describe how {x} works?"),
    ("topic", "What is a common misconception about {x}?"),
    ("topic", "Write a short story that involves {x}."),
    ("skill", "How can I {x}?"),
    ("skill", "Give me five tips to {x}."),
    ("skill", "What is the best way to {x}?"),
    ("skill", "I want to {x}. Where should I start?"),
    ("skill", "Write a step-by-step guide to {x}."),
    ("skill", "What mistakes should I avoid when I try to {x}?"),
    ("thing", "Write a short poem about {x}."),
    ("thing", "Describe {x} in a few sentences."),
    ("thing", "Write a haiku about {x}."),
    ("thing", "Write a short story about {x}."),
    ("pair", "What are the differences between {x} and {y}?"),
    ("pair", "Which is better, {x} or {y}? Give reasons."),
    ("pair", "Compare {x} and {y} in a short paragraph."),
    ("code", "Write a Python function that {x}."),
    ("code", "Write a JavaScript function that {x}."),
    ("name", "Write a short email to my friend {x} inviting them to dinner."),
    ("name", "Write a birthday message for my colleague {x}."),
    ("name", "Write a thank-you note to my teacher {x}."),
    ("name", "Write a short message to {x} asking to move our meeting to Friday."),
    ("math", "If I have {a} apples and buy {b} more, how many apples do I have?"),
    ("math", "What is {a} times {b}?"),
    ("math", "A train travels {a} km in {b} hours. What is its average speed?"),
    ("math", "What is {a} plus {b}?"),
    ("math", "A shirt costs {a} dollars and is {b}0 percent off. What is the new price?"),
]


def make_prompts(seed: int = 0, count: int = 2400) -> list[str]:
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
                template.format(a=rng.randint(2, 60), b=rng.randint(2, 9)) for _ in range(12)
            ]
    unique = sorted(set(prompts))
    rng.shuffle(unique)
    return unique[:count]


if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "data" / "chat_prompts.jsonl"
    prompts = make_prompts()
    out.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    print(f"wrote {len(prompts)} prompts to {out}")
