-- Add an INBOX.md entry once: remember its hash and queue it for its roles in one step.
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
for i = 2, #KEYS do
  redis.call('XADD', KEYS[i], '*', 'text', ARGV[2], 'from', 'INBOX.md', 'at', ARGV[3])
end
return 1
