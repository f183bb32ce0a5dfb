"""Write the bundled sample dataset (appliance/data/sample_{train,eval}.jsonl), deterministically.

The task: extract the city and the temperature (degrees Celsius) from a short weather sentence and
answer with one fixed JSON object, e.g.

    user:      It was 23 degrees in Lisbon this afternoon.
    assistant: {"city": "Lisbon", "temp_c": 23}

Scoring is automatic (appliance.evaluate.score_answers: both fields right = 1). The held-out split
uses cities and phrasings that never occur in the training split, so a high score means the model
learnt the task, not the rows. Run `python examples/make_sample_dataset.py` to regenerate; the
output is byte-identical for a given seed.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SYSTEM = "Extract the city and the temperature in degrees Celsius from the user's text. Reply with JSON only."

TRAIN_CITIES = [
    "Lisbon", "Madrid", "Paris", "Berlin", "Rome", "Vienna", "Prague", "Warsaw", "Dublin", "London",
    "Oslo", "Stockholm", "Helsinki", "Copenhagen", "Amsterdam", "Brussels", "Zurich", "Athens",
    "Istanbul", "Cairo", "Nairobi", "Lagos", "Accra", "Casablanca", "Tunis", "Dubai", "Doha",
    "Mumbai", "Delhi", "Karachi", "Dhaka", "Bangkok", "Hanoi", "Manila", "Jakarta", "Singapore",
    "Seoul", "Tokyo", "Osaka", "Beijing", "Shanghai", "Sydney", "Melbourne", "Auckland", "Toronto",
    "Montreal", "Chicago", "Boston", "Denver", "Seattle", "Houston", "Miami", "Lima", "Bogota",
    "Santiago", "Quito", "Havana", "New York", "Los Angeles", "Mexico City", "Buenos Aires",
    "Rio de Janeiro", "Cape Town", "Hong Kong", "Kuala Lumpur",
]
EVAL_CITIES = [
    "Porto", "Seville", "Lyon", "Munich", "Milan", "Budapest", "Krakow", "Edinburgh", "Bergen",
    "Tallinn", "Riga", "Marrakesh", "Addis Ababa", "Kyoto", "Busan", "Perth", "Vancouver",
    "San Diego", "Montevideo", "Sao Paulo",
]
# {city} and {t} (an integer) are filled in; the answer never depends on the phrasing.
TRAIN_TEMPLATES = [
    "It was {t} degrees in {city} this afternoon.",
    "{city} hit {t}°C yesterday.",
    "Forecast for {city}: a high of {t} °C.",
    "Temperatures in {city} reached {t} degrees Celsius on Monday.",
    "The thermometer in {city} showed {t}°C at noon.",
    "We landed in {city} and it was {t} degrees outside.",
    "Weather update: {city}, {t}°C, light wind.",
    "In {city} it is currently {t} degrees.",
    "My sister says {city} is at {t}°C right now.",
    "{city} will cool down to {t} degrees tonight.",
    "Expect {t}°C in {city} tomorrow morning.",
    "Last night {city} dropped to {t} degrees Celsius.",
    "A reading of {t} °C was recorded in {city}.",
    "At 3 pm the temperature in {city} was {t}°C.",
    "Travel note: {city}, about {t} degrees, sunny.",
    "The airport in {city} reports {t}°C.",
]
EVAL_TEMPLATES = TRAIN_TEMPLATES[:6] + [
    "Right now {city} sits at {t} degrees.",
    "Our hotel in {city} says it's {t}°C out there.",
    "Readings from {city} today: {t} degrees Celsius.",
    "It will be {t}°C in {city} on Friday.",
]


def row(city: str, t: int, template: str) -> dict:
    answer = json.dumps({"city": city, "temp_c": t})
    return {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": template.format(city=city, t=t)},
        {"role": "assistant", "content": answer},
    ]}


def make(n: int, cities: list[str], templates: list[str], rng: random.Random) -> list[dict]:
    return [row(rng.choice(cities), rng.randint(-15, 42), rng.choice(templates)) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "appliance" / "data"))
    ap.add_argument("--train", type=int, default=320)
    ap.add_argument("--eval", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("sample_train.jsonl", make(args.train, TRAIN_CITIES, TRAIN_TEMPLATES, rng)),
                       ("sample_eval.jsonl", make(args.eval, EVAL_CITIES, EVAL_TEMPLATES, rng))):
        (out / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"wrote {len(rows)} rows to {out / name}")


if __name__ == "__main__":
    main()
