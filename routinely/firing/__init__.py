"""From a firing to sessions: decoding deliveries, who may fire (chains, roles), admission, the start plan and its one Redis script, idempotent fire, replay, daily counts."""
