"""Write data/chat_prompts.jsonl: varied chat prompts built from templates.

They are the prompts SmolLM2-135M-Instruct answers to make its own Medusa
training data (self-distillation). Deliberately not MT-bench questions.
Run: python scripts/make_chat_prompts.py (writes both files)
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


# More lists and templates for data/chat_prompts_extra.jsonl (training only: the
# held-out split is drawn from chat_prompts.jsonl alone, so it stays the same).
MORE_TOPICS = [
    "plate tectonics", "the nitrogen cycle", "the carbon cycle", "hurricanes", "lightning",
    "auroras", "comets", "asteroids", "the Big Bang", "galaxies", "the Sun", "eclipses",
    "the Milky Way", "gravity on the moon", "the International Space Station", "rockets",
    "the human eye", "the human ear", "the skin", "blood", "the lungs", "the kidneys",
    "hormones", "memory", "dreams", "emotions", "laughter", "yawning", "fever", "first aid",
    "the placebo effect", "genetics", "cells", "proteins", "enzymes", "fungi", "algae",
    "seeds", "flowers", "pollination", "soil", "compost", "wetlands", "rivers", "lakes",
    "mountains", "caves", "islands", "the Arctic", "Antarctica", "the Amazon river",
    "the Sahara desert", "the Himalayas", "octopuses", "sharks", "dolphins", "owls",
    "butterflies", "frogs", "snakes", "turtles", "horses", "camels", "kangaroos", "pandas",
    "the ancient Greeks", "the Vikings", "the Maya civilization", "the Silk Road",
    "the Middle Ages", "castles", "knights", "the Moon landing", "the steam engine",
    "the telephone", "the light bulb", "the radio", "television", "the wheel", "writing",
    "paper", "glass", "steel", "plastic", "concrete", "cotton", "wool", "rubber",
    "the postal service", "trains", "ships", "submarines", "bicycles", "traffic lights",
    "elevators", "refrigerators", "microwaves", "washing machines", "air conditioning",
    "clocks", "thermometers", "barometers", "GPS", "Wi-Fi", "Bluetooth", "email",
    "search engines", "databases", "spreadsheets", "encryption", "open source software",
    "programming languages", "algorithms", "operating systems", "computer viruses",
    "artificial intelligence", "virtual reality", "blockchain", "the metric system",
    "fractions", "percentages", "probability", "statistics", "geometry", "prime numbers",
    "the number zero", "infinity", "logic puzzles", "origami", "knitting", "pottery",
    "gardening", "camping", "hiking", "fishing", "yoga", "football", "basketball", "tennis",
    "marathons", "the violin", "the drums", "opera", "ballet", "theater", "cinema",
    "comics", "novels", "fairy tales", "myths", "proverbs", "languages", "sign language",
    "translation", "journalism", "advertising", "marketing", "small businesses",
    "entrepreneurship", "insurance", "credit cards", "loans", "retirement savings",
    "renewable energy", "hydroelectric power", "geothermal energy", "water purification",
    "air pollution", "plastic pollution", "endangered species", "national parks", "zoos",
    "farming", "irrigation", "fertilizer", "bread", "pasta", "rice", "spices", "tea",
    "fermentation", "yogurt", "ice cream", "sugar", "salt", "olive oil", "vegetarian diets",
    "hydration", "posture", "stretching", "breathing exercises", "time management",
    "critical thinking", "creativity", "curiosity", "kindness", "patience", "gratitude",
    "public transport", "urban planning", "elections", "the United Nations", "human rights",
    "free speech", "the scientific method", "experiments", "fossils", "archaeology",
]
MORE_SKILLS = [
    "learn to juggle", "make a paper airplane", "brew good coffee", "bake bread",
    "fix a flat bike tire", "tie a tie", "iron a shirt", "sew a button", "make a smoothie",
    "write a poem", "learn to draw faces", "start journaling", "learn to meditate",
    "improve my memory", "focus while studying", "write clean code", "learn SQL",
    "build a website", "back up my computer", "choose a laptop", "use a spreadsheet",
    "learn to type faster", "speak more clearly", "listen better", "resolve a conflict",
    "apologize sincerely", "say no politely", "negotiate a price", "prepare for a marathon",
    "do a push-up", "improve my posture", "eat more vegetables", "cook a healthy dinner",
    "meal prep for the week", "reduce food waste", "declutter my home", "decorate a small room",
    "care for houseplants", "raise chickens", "teach a child to read", "help my kid with homework",
    "plan a birthday party", "host a dinner", "write a wedding speech", "pack for a trip",
    "beat jet lag", "learn to sail", "start a podcast", "start a blog", "take notes in class",
    "write a cover letter", "change careers", "become a better manager", "run a meeting",
    "learn to knit", "build a birdhouse", "make friends in a new city", "get over a cold",
]
MORE_THINGS = [
    "a waterfall", "an autumn evening", "a snowy village", "a child's laugh", "a thunderstorm",
    "a field of sunflowers", "an old bookshop", "a cup of tea", "a harbor at dawn",
    "a winter morning", "a bird singing", "a meadow", "a full moon", "the ocean at night",
    "a grandmother's kitchen", "a bicycle ride", "a school bus", "a paper boat", "a kite",
    "a fox in the snow", "a sleeping town", "a garden after rain", "a lost key",
    "a train station", "a red umbrella", "the last day of summer", "a campfire",
    "a shooting star", "an empty playground", "a busy café", "a hot air balloon",
    "a small boat", "a violin", "a foggy road", "an old friend", "a new home",
]
MORE_PAIRS = [
    ("apples", "oranges"), ("mountains", "beaches"), ("e-books", "paper books"),
    ("buses", "trams"), ("electric cars", "petrol cars"), ("jogging", "yoga"),
    ("chess", "checkers"), ("piano", "guitar"), ("Linux", "Windows"), ("SQL", "NoSQL"),
    ("classes", "functions"), ("lists", "tuples"), ("crocodiles", "alligators"),
    ("rabbits", "hares"), ("butter", "margarine"), ("baking", "frying"),
    ("weather forecasts", "climate models"), ("stocks", "bonds"), ("credit", "debit cards"),
    ("hurricanes", "tornadoes"), ("comets", "asteroids"), ("mitosis", "meiosis"),
    ("introverts", "extroverts"), ("podcasts", "radio"), ("museums", "zoos"),
    ("board games", "video games"), ("handwriting", "typing"), ("morning", "evening workouts"),
]
MORE_CODE = [
    "returns the length of the longest word in a sentence", "checks if a list is sorted",
    "rotates a list by k positions", "counts the digits of an integer",
    "returns the greatest common divisor of two numbers", "converts minutes to hours and minutes",
    "checks if a string contains only digits", "returns the product of a list of numbers",
    "reverses the words in a sentence", "finds the most common element of a list",
    "removes all spaces from a string", "returns the squares of a list of numbers",
    "checks if a number is even", "splits a list into chunks of size n",
    "counts the uppercase letters in a string", "returns the median of a list",
    "converts a dictionary to a list of pairs", "checks whether a password is strong",
    "returns all prime numbers below n", "computes the area of a circle",
]
MORE_TEMPLATES = [
    ("topic", "Explain {x} to a beginner."),
    ("topic", "What should everyone know about {x}?"),
    ("topic", "How would you teach {x} to a child?"),
    ("topic", "List a few key facts about {x}."),
    ("topic", "What is the history of {x}?"),
    ("topic", "Write a short quiz with three questions about {x}."),
    ("skill", "What do I need to {x}?"),
    ("skill", "Explain how to {x} in three steps."),
    ("thing", "Write a four-line poem about {x}."),
    ("thing", "Write a short description of {x} for a travel blog."),
    ("pair", "What do {x} and {y} have in common?"),
    ("code", "Write a Python function that {x}, with a short explanation."),
]


def _expand(templates, lists, rng) -> list[str]:
    prompts = []
    for kind, template in templates:
        if kind == "pair":
            prompts += [template.format(x=x, y=y) for x, y in lists["pair"]]
        elif kind == "math":
            prompts += [
                template.format(a=rng.randint(2, 60), b=rng.randint(2, 9)) for _ in range(12)
            ]
        else:
            prompts += [template.format(x=x) for x in lists[kind]]
    return prompts


def make_prompts(seed: int = 0, count: int = 2400) -> list[str]:
    rng = random.Random(seed)
    lists = {"topic": TOPICS, "skill": SKILLS, "thing": THINGS, "pair": PAIRS,
             "code": CODE_TASKS, "name": NAMES}
    unique = sorted(set(_expand(TEMPLATES, lists, rng)))
    rng.shuffle(unique)
    return unique[:count]


def make_extra_prompts(seed: int = 1, count: int = 2508) -> list[str]:
    """Every template on the new lists, plus the new templates on the old lists,
    minus anything make_prompts() already made."""
    rng = random.Random(seed)
    new = {"topic": MORE_TOPICS, "skill": MORE_SKILLS, "thing": MORE_THINGS,
           "pair": MORE_PAIRS, "code": MORE_CODE}
    old = {"topic": TOPICS, "skill": SKILLS, "thing": THINGS, "pair": PAIRS,
           "code": CODE_TASKS}
    prompts = _expand([t for t in TEMPLATES if t[0] in new] + MORE_TEMPLATES, new, rng)
    prompts += _expand(MORE_TEMPLATES, old, rng)
    unique = sorted(set(prompts) - set(make_prompts()))
    rng.shuffle(unique)
    return unique[:count]


def write_jsonl(path: Path, prompts: list) -> None:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    print(f"wrote {len(prompts)} prompts to {path}")


if __name__ == "__main__":
    data = Path(__file__).resolve().parents[1] / "data"
    write_jsonl(data / "chat_prompts.jsonl", make_prompts())
    write_jsonl(data / "chat_prompts_extra.jsonl", make_extra_prompts())
