-- Every stored message touches its conversation's updated_at, inside the
-- INSERT statement itself: one statement (one round trip) per message
-- instead of a transaction of INSERT + UPDATE. Kept in lockstep with
-- migrations/sqlite.
CREATE OR REPLACE FUNCTION messages_touch_conversation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE conversations SET updated_at = NEW.created_at WHERE id = NEW.conversation_id;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER messages_touch_conversation
AFTER INSERT ON messages
FOR EACH ROW EXECUTE FUNCTION messages_touch_conversation();
