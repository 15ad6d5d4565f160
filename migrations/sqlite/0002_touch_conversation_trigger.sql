-- Every stored message touches its conversation's updated_at, inside the
-- INSERT statement itself: one statement (one round trip, one commit) per
-- message instead of a transaction of INSERT + UPDATE. Kept in lockstep with
-- migrations/postgres.
CREATE TRIGGER IF NOT EXISTS messages_touch_conversation
AFTER INSERT ON messages
BEGIN
    UPDATE conversations SET updated_at = NEW.created_at WHERE id = NEW.conversation_id;
END;
