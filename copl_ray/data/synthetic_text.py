"""Text rendering for the synthetic datasets: every latent attribute is visible in the text.

Responses are short (about 10-90 words, under 130 MiniLM tokens) so that a small encoder (MiniLM, 256 tokens) sees all of
them next to their prompt. Each attribute has one visible carrier:

======================  ==========================================================================
attribute (1-5)         what the text shows
======================  ==========================================================================
helpfulness h           ``h - 1`` concrete tip sentences about the prompt's task (0-4)
honesty o               a confidence phrase: 1 overconfident ("guaranteed, no exceptions"), 2 sure,
                        3 none, 4 mild hedge, 5 calibrated ("I am not certain, but ... verify")
instruction following   the prompt asks for a list style and an opening tag; each is worth 2 points
  i                     when obeyed, 1 when the other style/tag is used, 0 when absent: i = 1 + pts
truthfulness t          ``5 - t`` flagged false claims ("Fact check: ...") mixed into the items (0-4)
length (TL;DR)          number of summary sentences (1-6); the score is the word count
======================  ==========================================================================

Randomness comes in as a pre-drawn float matrix ``u[n, k]`` (one row per text) so rendering is a
plain loop with no generator calls, deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------------- vocabulary

# (task, main step, concrete tips). Tips must be >= 4 per topic (helpfulness 5 shows 4).
TOPICS = [
    ("keep a sourdough starter alive", "feed it equal weights of flour and water daily",
     ["Keep it at about 24 degrees.", "Use unbleached flour for feeding.",
      "Discard half before each feeding.", "Store it in the fridge between bakes.",
      "Bubbles after six hours mean it is ready."]),
    ("learn to touch type", "practise the home row for ten minutes a day",
     ["Do not look at the keyboard.", "Use a free typing tutor site.",
      "Aim for accuracy before speed.", "Rest your wrists lightly.", "Track words per minute weekly."]),
    ("prepare for a job interview", "research the company and rehearse your answers aloud",
     ["Prepare three stories about past work.", "Read the job ad twice.",
      "Write questions for the interviewer.", "Plan your route the day before.",
      "Send a thank-you note afterwards."]),
    ("fix a leaking tap", "turn off the water supply and replace the washer",
     ["Take a photo before dismantling it.", "Bring the old washer to the shop.",
      "Wrap the thread with plumber tape.", "Use an adjustable spanner gently.",
      "Plug the sink so parts do not fall."]),
    ("start running as a beginner", "alternate one minute of running with two of walking",
     ["Run three times a week at most.", "Buy shoes fitted at a running shop.",
      "Keep a pace where you can talk.", "Add ten percent distance per week.",
      "Stretch calves after each run."]),
    ("save money on groceries", "plan weekly meals and shop with a list",
     ["Compare unit prices on shelf labels.", "Buy store brands for staples.",
      "Cook large batches and freeze portions.", "Shop after eating, not hungry.",
      "Use seasonal vegetables."]),
    ("improve my sleep", "go to bed and wake up at the same time every day",
     ["Keep the bedroom cool and dark.", "Stop caffeine after noon.",
      "Put screens away an hour before bed.", "Get morning daylight.", "Avoid long naps."]),
    ("write a cover letter", "open with why you want this specific role",
     ["Keep it under one page.", "Mirror keywords from the job ad.",
      "Give one measurable achievement.", "Address a named person if possible.",
      "Close with a clear call to action."]),
    ("grow tomatoes on a balcony", "use a large pot with drainage and full sun",
     ["Choose a cherry tomato variety.", "Water deeply at the base.",
      "Add a stake when planting.", "Feed with tomato fertiliser weekly.",
      "Pinch out side shoots."]),
    ("learn basic Spanish", "study twenty minutes a day with spaced repetition",
     ["Learn the hundred most common words first.", "Listen to slow podcasts.",
      "Speak aloud even when alone.", "Label objects at home.", "Find a language exchange partner."]),
    ("back up my laptop", "copy your files to an external drive every week",
     ["Keep one copy off site.", "Use the built-in backup tool.",
      "Test restoring a file monthly.", "Encrypt the backup drive.", "Automate it with a schedule."]),
    ("make a budget spreadsheet", "list monthly income and every fixed expense",
     ["Add a column for actual spending.", "Use categories like food and rent.",
      "Review it every Sunday.", "Set a savings line first.", "Colour overspent cells red."]),
    ("train a puppy to sit", "hold a treat above its nose and say sit once",
     ["Reward within two seconds.", "Keep sessions to five minutes.",
      "Practise in a quiet room first.", "Use the same word every time.",
      "Fade out treats slowly."]),
    ("reduce stress at work", "write down your three priorities each morning",
     ["Take a short walk at lunch.", "Batch email twice a day.",
      "Say no to low-value meetings.", "Breathe slowly for one minute.",
      "Talk to your manager early."]),
    ("clean a cast iron pan", "rinse it with hot water and scrub with salt",
     ["Dry it on the stove right away.", "Rub in a thin layer of oil.",
      "Avoid soaking it overnight.", "Skip the dishwasher.", "Reseason it in the oven yearly."]),
    ("choose a used bicycle", "check the frame for cracks and the wheels for wobble",
     ["Squeeze both brakes hard.", "Shift through every gear.", "Ask for the service history.",
      "Bring a friend who rides.", "Check the frame size fits you."]),
]
QUESTION_TEMPLATES = [
    "How do I {task}?", "What is a good way to {task}?", "Can you explain how to {task}?",
    "I want to {task}. Where should I start?", "Any advice on how to {task}?",
    "What should a beginner know to {task}?",
]
LIST_STYLES = ("numbered", "bulleted")
LIST_REQUEST = {"numbered": "Reply as a numbered list", "bulleted": "Reply with bullet points"}
TAGS = ("Answer:", "In short:", "Summary:", "Quick take:")
MAIN_TEMPLATES = ["To {task}, {step}.", "Key to {task_ing}: {step}.", "First, {step}."]
HEDGES = {
    1: ["Guaranteed, no exceptions.", "One hundred percent certain.", "Zero doubt about this."],
    2: ["This is definitely right.", "I am sure this works.", "This is clearly correct."],
    3: [""],
    4: ["I think this works.", "This usually works.", "As far as I know, this works."],
    5: ["I am not certain; please verify this.", "I may be wrong, so check a source.",
        "I am unsure; treat this as a start."],
}
FALSE_CLAIMS = [
    "Fact check: the Moon is cheese.", "Fact check: water boils at forty degrees.",
    "Fact check: we use ten percent of our brain.", "Fact check: the Sun orbits the Earth.",
    "Fact check: bats are fully blind.", "Fact check: Paris is in Spain.",
    "Fact check: spiders have six legs.", "Fact check: a week has nine days.",
]

# TL;DR posts: (situation, short paraphrase, complication, short paraphrase, question).
POSTS = [
    ("my roommate keeps eating my food without asking", "roommate eats my food",
     "when I brought it up he laughed it off", "he laughed it off", "how do I set boundaries"),
    ("my boss asked me to work every weekend this month", "boss wants every weekend",
     "I already booked a trip with my partner", "a trip is already booked", "should I push back"),
    ("I lent my best friend a large sum of money", "lent friend money",
     "she has stopped answering my messages", "she ignores my messages", "how do I ask for it back"),
    ("my neighbour plays loud music every night", "neighbour plays loud music",
     "I have an exam next week and cannot sleep", "I cannot sleep before an exam", "what can I do"),
    ("I got a job offer from a company across the country", "got an offer far away",
     "my family does not want me to move", "family opposes the move", "should I take it"),
    ("my sister wants me to be her wedding planner", "sister wants me to plan her wedding",
     "I have no experience and a busy job", "no experience and little time", "how do I say no kindly"),
    ("my landlord has not fixed the heating for weeks", "landlord ignores broken heating",
     "it is getting cold and he avoids my calls", "he avoids my calls", "what are my options"),
    ("my partner and I disagree about getting a dog", "we disagree about a dog",
     "we both feel strongly and argue often", "we argue about it", "how do we decide"),
]
WHO = ["OP", "Poster", "Author"]
FILLERS = [
    "It has been going on for months.", "Friends are split on it.", "Feeling stressed about it.",
    "Already tried talking calmly.", "Money is a bit tight too.", "Wants a fair solution.",
    "Does not want to lose the relationship.", "Open to any advice.",
]
MAX_SUMMARY_SENTENCES = 6
N_RANDOM = 16  # columns of the per-text random matrix ``u``


def _pick(pool, x: float):
    return pool[min(int(x * len(pool)), len(pool) - 1)]


def _ing(task: str) -> str:
    verb, _, rest = task.partition(" ")
    stem = verb[:-1] if verb.endswith("e") and verb not in ("be", "see") else verb
    return f"{stem}ing {rest}".strip()


# ----------------------------------------------------------------------------- UF-style


def draw_prompt_spec(u: np.ndarray) -> np.ndarray:
    """Prompt attributes from uniforms ``u [n, >=4]``: int columns (topic, template, list style, tag)."""
    return np.stack([
        (u[:, 0] * len(TOPICS)).astype(np.int64), (u[:, 1] * len(QUESTION_TEMPLATES)).astype(np.int64),
        (u[:, 2] * len(LIST_STYLES)).astype(np.int64), (u[:, 3] * len(TAGS)).astype(np.int64),
    ], axis=1)


def render_prompt(spec: np.ndarray) -> str:
    """One UF-style prompt: a question plus the format it asks for (``spec`` from `draw_prompt_spec`)."""
    topic, template, style, tag = (int(v) for v in spec)
    question = QUESTION_TEMPLATES[template].format(task=TOPICS[topic][0])
    return f"{question} {LIST_REQUEST[LIST_STYLES[style]]} and start with '{TAGS[tag]}'"


def instruction_points(level: int, x: float) -> tuple[int, int]:
    """Split instruction-following ``level`` (1-5) into (list points, tag points), each 0-2."""
    total = level - 1
    options = [(a, total - a) for a in range(3) if 0 <= total - a <= 2]
    return _pick(options, x)


def render_response(spec: np.ndarray, levels: np.ndarray, u: np.ndarray) -> str:
    """One response to the prompt ``spec``.

    Args:
        spec: [4] prompt attributes (topic, template, list style, tag).
        levels: [4] ints 1-5 (helpfulness, honesty, instruction following, truthfulness).
        u: [N_RANDOM] uniforms choosing templates, tips, claims and their order.
    """
    topic, _, style, tag = (int(v) for v in spec)
    h, o, i, t = (int(v) for v in levels)
    task, step, tips = TOPICS[topic]
    list_pts, tag_pts = instruction_points(i, u[0])
    items = [_pick(MAIN_TEMPLATES, u[1]).format(task=task, task_ing=_ing(task), step=step)]
    items[0] = items[0][0].upper() + items[0][1:]
    start = int(u[2] * len(tips))
    extra = [tips[(start + k) % len(tips)] for k in range(h - 1)]
    start = int(u[3] * len(FALSE_CLAIMS))
    extra += [FALSE_CLAIMS[(start + k) % len(FALSE_CLAIMS)] for k in range(5 - t)]
    order = np.argsort(u[4:4 + len(extra)]) if extra else []
    items += [extra[k] for k in order]
    if list_pts == 0:
        body = " ".join(items)
    else:
        used = LIST_STYLES[style] if list_pts == 2 else LIST_STYLES[1 - style]
        marks = [f"{k + 1}." if used == "numbered" else "-" for k in range(len(items))]
        body = "\n".join(f"{m} {s}" for m, s in zip(marks, items))
    head = []
    if tag_pts == 2:
        head.append(TAGS[tag])
    elif tag_pts == 1:
        head.append(TAGS[(tag + 1 + int(u[12] * (len(TAGS) - 1))) % len(TAGS)])
    hedge = _pick(HEDGES[o], u[13])
    if hedge:
        head.append(hedge)
    sep = "\n" if list_pts else " "
    return (" ".join(head) + sep + body) if head else body


# ----------------------------------------------------------------------------- TL;DR-style


def draw_post_spec(u: np.ndarray) -> np.ndarray:
    """Post attributes from uniforms ``u [n, >=2]``: int columns (post, narrator)."""
    return np.stack([(u[:, 0] * len(POSTS)).astype(np.int64), (u[:, 1] * 40 + 18).astype(np.int64)], 1)


def render_post(spec: np.ndarray) -> str:
    """A short Reddit-style post asking for a summary."""
    post, age = (int(v) for v in spec)
    situation, _, complication, _, question = POSTS[post]
    return (f"Summarize this post: I ({age}) have a problem: {situation}, and {complication}."
            f" {question[0].upper() + question[1:]}?")


def render_summary(spec: np.ndarray, n_sentences: int, u: np.ndarray) -> str:
    """A summary of ``n_sentences`` (1-6) sentences: the gist first, then details and fillers."""
    post, _ = (int(v) for v in spec)
    _, short, _, comp_short, question = POSTS[post]
    who = _pick(WHO, u[0])
    core = [f"{who}: {short}.", f"Also, {comp_short}.", f"Asks {question}."]
    start = int(u[1] * len(FILLERS))
    fillers = [FILLERS[(start + k) % len(FILLERS)] for k in range(MAX_SUMMARY_SENTENCES)]
    return " ".join((core + fillers)[:n_sentences])


def word_count(text: str) -> int:
    return len(text.split())
