-- Tool calls are stored typed: `messages.tool_calls` holds `[{"id", "name", "arguments"}]`
-- with the arguments as a JSON value, instead of OpenAI's wire form
-- (`[{"id", "type", "function": {"name", "arguments": "<JSON text>"}}]`), which every reader
-- had to parse back. OpenAI's form is made only where it is spoken (the APIs, the export).
--
-- Each existing call is converted in place: arguments that are JSON text become that value;
-- text that is not JSON is kept as a JSON string; absent arguments become `{}`; a call
-- without an id gets one (`call_` and the message id and position, unique in the store);
-- entries without a function name (which no reader could use) are dropped, and a message
-- left with no call stores none.
UPDATE messages
SET tool_calls = (
    SELECT nullif(json_group_array(json_object(
        'id', coalesce(
            json_extract(call.value, '$.id'),
            'call_' || messages.id || '_' || call.key
        ),
        'name', json_extract(call.value, '$.function.name'),
        'arguments', CASE
            WHEN json_type(call.value, '$.function.arguments') IS NULL
                OR json_type(call.value, '$.function.arguments') = 'null'
                OR (json_type(call.value, '$.function.arguments') = 'text'
                    AND trim(json_extract(call.value, '$.function.arguments')) = '')
                THEN json('{}')
            WHEN json_type(call.value, '$.function.arguments') = 'text'
                AND json_valid(json_extract(call.value, '$.function.arguments'))
                THEN json(json_extract(call.value, '$.function.arguments'))
            WHEN json_type(call.value, '$.function.arguments') = 'text'
                THEN json_extract(call.value, '$.function.arguments')
            ELSE json(call.value -> '$.function.arguments')
        END
    )), '[]')
    FROM json_each(messages.tool_calls) AS call
    WHERE json_type(call.value, '$.function.name') = 'text'
)
WHERE tool_calls IS NOT NULL AND json_valid(tool_calls) AND json_type(tool_calls) = 'array';

-- Anything else in the column (not JSON, not a list) was never readable as calls.
UPDATE messages SET tool_calls = NULL
WHERE tool_calls IS NOT NULL AND (NOT json_valid(tool_calls) OR json_type(tool_calls) != 'array');
