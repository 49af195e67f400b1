-- The loop's INBOX messages after the last acknowledged one. KEYS: loop, inbox.
local acked = redis.call('HGET', KEYS[1], 'inbox_acked')
if not acked or acked == '' then acked = '0-0' end
return redis.call('XRANGE', KEYS[2], '(' .. acked, '+')
