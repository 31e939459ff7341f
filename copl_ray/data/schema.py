"""Arrow schemas of the dataset contract (CONTRACT section 1). Extra columns are allowed."""

import pyarrow as pa

PROMPTS = pa.schema([("prompt_id", pa.string()), ("text", pa.string())])
RESPONSES = pa.schema(
    [("response_id", pa.string()), ("prompt_id", pa.string()), ("text", pa.string())]
)
USERS = pa.schema([("user_id", pa.string()), ("split", pa.string()), ("group", pa.string())])
ANNOTATIONS = pa.schema(
    [
        ("user_id", pa.string()),
        ("prompt_id", pa.string()),
        ("chosen_id", pa.string()),
        ("rejected_id", pa.string()),
        ("kind", pa.string()),
    ]
)

# Columns that may hold nulls; every other contract column must be fully populated.
NULLABLE = {"group", "kind"}
KINDS = ("common", "controversial")
USER_SPLITS = ("seen", "unseen")

TABLES = {"prompts": PROMPTS, "responses": RESPONSES, "users": USERS}
