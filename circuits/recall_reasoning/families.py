"""The relation families of the recall-vs-reasoning tasks: for each relation, its facts over real entities
(entity, bridge, answer), its recall templates and its reasoning templates; the no-copy families, whose reasoning
prompts never state the answer. circuits.recall_reasoning.tasks builds the prompts from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from interp.errors import InterpError, did_you_mean


@dataclass(frozen=True)
class Family:
    """One relation: entity -> answer, its recall and reasoning templates, and each entity's bridge.

    Recall templates take {entity}; reasoning templates take {bridge}, {entity} and {answer}.
    """

    name: str
    facts: tuple[tuple[str, str, str], ...]  # (entity, bridge, answer)
    recall_templates: tuple[str, ...]
    reasoning_templates: tuple[str, ...]


_COUNTRIES = (  # (country, capital, continent, language); facts the model is then checked on, one by one
    ("France", "Paris", "Europe", "French"),
    ("Germany", "Berlin", "Europe", "German"),
    ("Italy", "Rome", "Europe", "Italian"),
    ("Spain", "Madrid", "Europe", "Spanish"),
    ("Japan", "Tokyo", "Asia", "Japanese"),
    ("China", "Beijing", "Asia", "Chinese"),
    ("Russia", "Moscow", "Europe", "Russian"),
    ("Egypt", "Cairo", "Africa", "Arabic"),
    ("Kenya", "Nairobi", "Africa", "Swahili"),
    ("Canada", "Ottawa", "North America", "English"),
    ("Mexico", "Mexico City", "North America", "Spanish"),
    ("Argentina", "Buenos Aires", "South America", "Spanish"),
    ("Peru", "Lima", "South America", "Spanish"),
    ("Greece", "Athens", "Europe", "Greek"),
    ("Portugal", "Lisbon", "Europe", "Portuguese"),
    ("Poland", "Warsaw", "Europe", "Polish"),
    ("Sweden", "Stockholm", "Europe", "Swedish"),
    ("Norway", "Oslo", "Europe", "Norwegian"),
    ("Turkey", "Ankara", "Asia", "Turkish"),
    ("Thailand", "Bangkok", "Asia", "Thai"),
    ("Vietnam", "Hanoi", "Asia", "Vietnamese"),
    ("Nigeria", "Abuja", "Africa", "English"),
    ("Ghana", "Accra", "Africa", "English"),
    ("Australia", "Canberra", "Oceania", "English"),
    ("Chile", "Santiago", "South America", "Spanish"),
    ("Cuba", "Havana", "North America", "Spanish"),
    ("Austria", "Vienna", "Europe", "German"),
    ("Hungary", "Budapest", "Europe", "Hungarian"),
    ("Ireland", "Dublin", "Europe", "English"),
    ("Finland", "Helsinki", "Europe", "Finnish"),
    ("Denmark", "Copenhagen", "Europe", "Danish"),
    ("Netherlands", "Amsterdam", "Europe", "Dutch"),
    ("Korea", "Seoul", "Asia", "Korean"),
    ("Morocco", "Rabat", "Africa", "Arabic"),
    ("Colombia", "Bogota", "South America", "Spanish"),
    ("Iran", "Tehran", "Asia", "Persian"),
    ("India", "New Delhi", "Asia", "Hindi"),
)
_PEOPLE = (
    "Anna",
    "Omar",
    "Lena",
    "Ravi",
    "Mia",
    "Tom",
    "Sara",
    "Ken",
)  # fresh bridges: each item takes one by its index
_ELEMENTS = (
    ("gold", "Au"),
    ("silver", "Ag"),
    ("iron", "Fe"),
    ("sodium", "Na"),
    ("potassium", "K"),
    ("oxygen", "O"),
    ("hydrogen", "H"),
    ("carbon", "C"),
    ("nitrogen", "N"),
    ("copper", "Cu"),
    ("lead", "Pb"),
    ("helium", "He"),
    ("calcium", "Ca"),
    ("zinc", "Zn"),
    ("tin", "Sn"),
    ("sulfur", "S"),
    ("mercury", "Hg"),
    ("neon", "Ne"),
    ("chlorine", "Cl"),
    ("magnesium", "Mg"),
)
_OBJECTS = ("ring", "coin", "wire", "rod", "bar", "cup", "plate", "key")
_OPPOSITES = (
    ("hot", "cold"),
    ("big", "small"),
    ("up", "down"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("old", "new"),
    ("open", "closed"),
    ("light", "dark"),
    ("good", "bad"),
    ("rich", "poor"),
    ("hard", "soft"),
    ("wet", "dry"),
    ("tall", "short"),
    ("early", "late"),
    ("strong", "weak"),
    ("full", "empty"),
    ("thick", "thin"),
    ("loud", "quiet"),
    ("high", "low"),
    ("right", "wrong"),
)
_NONCE_WORDS = ("blick", "dax", "wug", "fep", "tove", "zorp", "glim", "mip")

FAMILIES: dict[str, Family] = {
    "capital": Family(
        "capital",
        tuple((c, _PEOPLE[i % len(_PEOPLE)], cap) for i, (c, cap, _, _) in enumerate(_COUNTRIES)),
        ("The capital of {entity} is", "The capital city of {entity} is", "{entity}'s capital is the city of"),
        (
            "{bridge} lives in {entity}. The capital of {entity} is {answer}. So {bridge} lives in the country whose capital is",
            "{bridge} was born in {entity}, and the capital of {entity} is {answer}. The capital of {bridge}'s country is",
        ),
    ),
    "continent": Family(
        "continent",
        tuple((c, cap, cont) for c, cap, cont, _ in _COUNTRIES),
        ("{entity} is a country in", "{entity} is located in the continent of", "The country of {entity} lies in"),
        (
            "{bridge} is the capital of {entity}. {entity} is in {answer}. Therefore {bridge} is in",
            "Suppose {bridge} is the capital of {entity}, and {entity} is located in {answer}. So {bridge} is located in",
        ),
    ),
    "language": Family(
        "language",
        tuple((c, _PEOPLE[i % len(_PEOPLE)], lang) for i, (c, _, _, lang) in enumerate(_COUNTRIES)),
        (
            "The official language of {entity} is",
            "In {entity}, most people speak",
            "The main language spoken in {entity} is",
        ),
        (
            "{bridge} lives in {entity}. People in {entity} speak {answer}. So {bridge} speaks",
            "{bridge} grew up in {entity}, where the language is {answer}. The language {bridge} grew up with is",
        ),
    ),
    "element": Family(
        "element",
        tuple((e, _OBJECTS[i % len(_OBJECTS)], sym) for i, (e, sym) in enumerate(_ELEMENTS)),
        (
            "The chemical symbol for {entity} is",
            "The symbol of the element {entity} is",
            "In chemistry, {entity} is written as",
        ),
        (
            "The {bridge} is made of {entity}. The chemical symbol for {entity} is {answer}. So the symbol for the {bridge}'s material is",
            "A {bridge} made of {entity}: the symbol of {entity} is {answer}, so the {bridge}'s element has the symbol",
        ),
    ),
    "opposite": Family(
        "opposite",
        tuple((w, _NONCE_WORDS[i % len(_NONCE_WORDS)], opp) for i, (w, opp) in enumerate(_OPPOSITES)),
        ("The opposite of {entity} is", "The opposite of the word {entity} is", "{entity} is the opposite of"),
        (
            "The word {bridge} means {entity}. The opposite of {entity} is {answer}. So the opposite of {bridge} is",
            "In a new language, {bridge} means {entity}, and the opposite of {entity} is {answer}. The opposite of {bridge} is",
        ),
    ),
    # Reasoning families whose answer is NOT in the prompt (construct validity): the in-context fact binds a fresh
    # bridge to the entity and the answer must then be recalled, so no in-context copy head can produce it.
    # Reasoning templates only (recall is the base family's). Successor families ("Tom is one month older than Anna,
    # born in May. Tom was born in") were tried first: SmolLM2-135M answers them at chance (2/24 and 2/38).
    "capital_no_copy": Family(
        "capital_no_copy",
        tuple((c, _PEOPLE[i % len(_PEOPLE)], cap) for i, (c, cap, _, _) in enumerate(_COUNTRIES)),
        (),
        (
            "{bridge} lives in {entity}. The capital of the country where {bridge} lives is",
            "{bridge} was born in {entity}. {bridge} was born in the country whose capital is",
        ),
    ),
    "continent_no_copy": Family(
        "continent_no_copy",
        tuple((c, _PEOPLE[i % len(_PEOPLE)], cont) for i, (c, _, cont, _) in enumerate(_COUNTRIES)),
        (),
        (
            "{bridge} lives in {entity}. So {bridge} lives in the continent of",
            "{bridge} was born in {entity}, a country in",
        ),
    ),
    "language_no_copy": Family(
        "language_no_copy",
        tuple((c, _PEOPLE[i % len(_PEOPLE)], lang) for i, (c, _, _, lang) in enumerate(_COUNTRIES)),
        (),
        (
            "{bridge} lives in {entity}. So {bridge} speaks",
            "{bridge} grew up in {entity}. The language {bridge} grew up with is",
        ),
    ),
    "element_no_copy": Family(
        "element_no_copy",
        tuple((e, _OBJECTS[i % len(_OBJECTS)], sym) for i, (e, sym) in enumerate(_ELEMENTS)),
        (),
        (
            "The {bridge} is made of {entity}. So the chemical symbol of the {bridge}'s material is",
            "A {bridge} made of {entity}: the {bridge}'s element has the chemical symbol",
        ),
    ),
    "opposite_no_copy": Family(
        "opposite_no_copy",
        tuple((w, _NONCE_WORDS[i % len(_NONCE_WORDS)], opp) for i, (w, opp) in enumerate(_OPPOSITES)),
        (),
        (
            "The word {bridge} means {entity}. So the opposite of {bridge} is",
            "In another language, {bridge} means {entity}. The opposite of {bridge} is",
        ),
    ),
}
NO_COPY_FAMILIES = tuple(name for name in FAMILIES if name.endswith("_no_copy"))


def families(names: Sequence[str] | None = None) -> list[Family]:
    """The named relation families (all when None); an unknown name is an error with close matches."""
    names = list(FAMILIES) if names is None else list(names)
    for name in names:
        if name not in FAMILIES:
            raise InterpError(
                f"families: {name!r} is not a relation family.{did_you_mean(name, FAMILIES)} Known: {', '.join(FAMILIES)}."
            )
    return [FAMILIES[n] for n in names]
