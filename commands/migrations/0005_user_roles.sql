-- Roles granted beyond `customer` (API.md, Roles), by `chronicle users grant <username>
-- staff`. Read at login into the token's `roles`; not secret, not an event of the log.
CREATE TABLE IF NOT EXISTS user_roles (
    user_id    text        NOT NULL,
    role       text        NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, role)
);
