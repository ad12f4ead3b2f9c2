-- Where an audited request came from: the client's address (as the limits
-- key it: an IPv4 address, an IPv6 /64, or `unknown`) and its User-Agent
-- (at most 200 characters, control characters replaced). Both are empty for
-- events no request caused (the operator's CLI).
ALTER TABLE audit_events ADD COLUMN client TEXT;
ALTER TABLE audit_events ADD COLUMN user_agent TEXT;
