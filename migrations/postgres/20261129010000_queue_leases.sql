-- Events a consumer reading with `ack=explicit` holds and has not acknowledged: each is
-- delivered again once `expires_at` (epoch ms) has passed. `token` is the batch's ack token.
CREATE TABLE queue_leases (
    consumer   TEXT COLLATE "C" NOT NULL,
    seq        BIGINT NOT NULL,
    token      TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, seq)
);
CREATE INDEX queue_leases_token ON queue_leases (consumer, token);
CREATE INDEX queue_leases_expiry ON queue_leases (consumer, expires_at);
