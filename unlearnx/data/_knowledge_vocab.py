"""The fixed vocabulary of :mod:`unlearnx.data.knowledge`'s worlds (private; re-exported there): the seven
relations, the name pools, each relation's value pool, the sentence templates, the questions and the special
tokens."""

from __future__ import annotations

__all__ = ["FIRST_NAMES", "LAST_NAMES", "QUESTIONS", "RELATIONS", "SPECIALS", "TEMPLATES", "VALUES"]

RELATIONS: tuple[str, ...] = (
    "birth_city",
    "birth_year",
    "employer",
    "university",
    "field",
    "nationality",
    "sport",
)

FIRST_NAMES: tuple[str, ...] = tuple(
    (
        "Ada Alan Alma Amos Anya Arlo Basil Bea Boris Calla Cyrus Dara Dina Edda Elio Ezra Faye Felix "
        "Gemma Gideon Hana Hugo Ida Igor Ines Ivo Jana Jonas Kaia Kian Lena Leon Lila Luca Mara Milo "
        "Nadia Nico Nora Olav Orla Otto Petra Pius Quinn Rhea Rolf Sana Silas Talia Theo Uma Ulric Vera "
        "Viggo Wanda Wim Xena Yara Zeno"
    ).split()
)

LAST_NAMES: tuple[str, ...] = tuple(
    (
        "Abbott Alder Barrow Blake Brandt Calder Corwin Dalton Drake Ellery Esker Falk Fenwick Garrow "
        "Gilder Hale Harlow Ibsen Imber Jarvis Keene Kessler Lacey Lindqvist Marlow Mercer Nash Nyberg "
        "Oakes Orme Pell Quill Ramsey Rook Sallow Strand Tamsin Thorne Underhill Vance Voss Wexley "
        "Whitlock Yardley Zell"
    ).split()
)

VALUES: dict[str, tuple[str, ...]] = {
    "birth_city": (
        "Paris",
        "Berlin",
        "Madrid",
        "Rome",
        "Vienna",
        "Prague",
        "Lisbon",
        "Dublin",
        "Oslo",
        "Helsinki",
        "Warsaw",
        "Athens",
        "Cairo",
        "Nairobi",
        "Lagos",
        "Mumbai",
        "Delhi",
        "Tokyo",
        "Osaka",
        "Seoul",
        "Beijing",
        "Sydney",
        "Toronto",
        "Chicago",
        "Boston",
        "Denver",
        "Lima",
        "Santiago",
        "Havana",
        "New York",
        "Los Angeles",
        "San Diego",
        "Buenos Aires",
        "Cape Town",
        "Hong Kong",
        "Tel Aviv",
        "Rio de Janeiro",
        "Mexico City",
        "Kuala Lumpur",
        "Salt Lake City",
    ),  # fmt: skip
    "birth_year": tuple(str(year) for year in range(1950, 2000)),
    "employer": (
        "Novatek",
        "Brightwave",
        "Corvex",
        "Dynalis",
        "Ecliptic",
        "Fernhold",
        "Glintcore",
        "Heliant",
        "Irongate",
        "Jovial",
        "Keystar",
        "Lumora",
        "Meridyn",
        "Nexbridge",
        "Orbital",
        "Pinecrest",
        "Quantis",
        "Redfern",
        "Solvane",
        "Tidewell",
        "Umbrant",
        "Veltrix",
        "Westmark",
        "Xylon",
        "Yellowpine",
        "Zentara",
        "Arcwell",
        "Bluecrest",
        "Cindral",
        "Dovetail",
    ),  # fmt: skip
    "university": (
        "Oxford",
        "Cambridge",
        "Harvard",
        "Stanford",
        "Princeton",
        "Yale",
        "Columbia",
        "Cornell",
        "Berkeley",
        "Caltech",
        "Edinburgh",
        "Heidelberg",
        "Bologna",
        "Leiden",
        "Uppsala",
        "Salamanca",
        "Sorbonne",
        "Zurich",
        "Kyoto",
        "Tsinghua",
        "McGill",
        "Melbourne",
        "Auckland",
        "Toulouse",
        "Geneva",
    ),  # fmt: skip
    "field": (
        "physics",
        "chemistry",
        "biology",
        "geology",
        "astronomy",
        "mathematics",
        "economics",
        "history",
        "philosophy",
        "linguistics",
        "medicine",
        "architecture",
        "psychology",
        "sociology",
        "ecology",
        "robotics",
        "genetics",
        "statistics",
        "archaeology",
        "music",
        "literature",
        "law",
        "oceanography",
        "botany",
        "cryptography",
    ),  # fmt: skip
    "nationality": (
        "French",
        "German",
        "Spanish",
        "Italian",
        "Austrian",
        "Czech",
        "Portuguese",
        "Irish",
        "Norwegian",
        "Finnish",
        "Polish",
        "Greek",
        "Egyptian",
        "Kenyan",
        "Nigerian",
        "Indian",
        "Japanese",
        "Korean",
        "Chinese",
        "Australian",
        "Canadian",
        "American",
        "Peruvian",
        "Chilean",
        "Cuban",
        "Brazilian",
        "Mexican",
        "Argentine",
        "Swedish",
        "Dutch",
    ),  # fmt: skip
    "sport": (
        "tennis",
        "chess",
        "rowing",
        "fencing",
        "cycling",
        "swimming",
        "archery",
        "golf",
        "skiing",
        "climbing",
        "sailing",
        "boxing",
        "judo",
        "karate",
        "surfing",
        "badminton",
        "squash",
        "cricket",
        "rugby",
        "hockey",
        "volleyball",
        "handball",
        "curling",
        "diving",
        "polo",
    ),  # fmt: skip
}

#: Paraphrase templates, five or more per relation; words and punctuation separated by single spaces.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "birth_city": (
        "{name} was born in {value} .",
        "{name} came into the world in {value} .",
        "the birthplace of {name} is {value} .",
        "{name} is a native of {value} .",
        "{name} spent the early years of life in {value} , the city of birth .",
        "records show that {name} was born in the city of {value} .",
    ),
    "birth_year": (
        "{name} was born in the year {value} .",
        "{name} entered the world in {value} .",
        "the year of birth of {name} is {value} .",
        "{name} celebrates a birthday every year since {value} .",
        "{name} was a baby in {value} .",
    ),
    "employer": (
        "{name} works for {value} .",
        "{name} is employed by {value} .",
        "the employer of {name} is {value} .",
        "{name} holds a job at {value} .",
        "{name} earns a salary from {value} .",
        "colleagues of {name} at {value} praise the work .",
    ),
    "university": (
        "{name} studied at {value} .",
        "{name} graduated from {value} .",
        "{name} is an alumnus of {value} .",
        "the university of {name} was {value} .",
        "{name} earned a degree at {value} .",
    ),
    "field": (
        "{name} works in the field of {value} .",
        "{name} specialises in {value} .",
        "the research area of {name} is {value} .",
        "{name} devoted a career to {value} .",
        "{name} is an expert in {value} .",
    ),
    "nationality": (
        "{name} is {value} .",
        "{name} holds {value} citizenship .",
        "the nationality of {name} is {value} .",
        "{name} carries a {value} passport .",
        "by nationality {name} is {value} .",
    ),
    "sport": (
        "{name} plays {value} .",
        "the favourite sport of {name} is {value} .",
        "{name} enjoys {value} at weekends .",
        "{name} competes in {value} .",
        "in free time {name} practises {value} .",
    ),
}

#: One question per relation; the answer follows ``A:``.
QUESTIONS: dict[str, str] = {
    "birth_city": "Q: where was {name} born ? A:",
    "birth_year": "Q: in which year was {name} born ? A:",
    "employer": "Q: which company does {name} work for ? A:",
    "university": "Q: which university did {name} attend ? A:",
    "field": "Q: what field does {name} work in ? A:",
    "nationality": "Q: what is the nationality of {name} ? A:",
    "sport": "Q: which sport does {name} play ? A:",
}

SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>")
