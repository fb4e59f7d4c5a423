-- Each event store numbers its events in the order they are written: `position`, from a
-- sequence of the store's own, with an index. A rebuild from the store (`chronicle replay`)
-- reads the events in that order straight off the index, instead of sorting the whole
-- store by commit time, and an aggregate's events keep their order (its next event is
-- written only after the one before it committed).
--
-- Events written before this have no position (adding a column with a default would
-- rewrite the table): they were all written before any event that has one, and a rebuild
-- reads them first, by commit time, as before, through an index of their own (which stays
-- empty in a store made after this, so a rebuild finds at once that there are none).
--
-- `chronicle_commands::migrate` calls the function for every context of the list after
-- `chronicle_context_store`; it changes nothing on a store that already has the column
-- (and takes no lock then).
CREATE FUNCTION chronicle_event_positions(store text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = format('%I.events', store)::regclass
                     AND attname = 'position' AND NOT attisdropped) THEN
        EXECUTE format($ddl$
            ALTER TABLE %1$I.events ADD COLUMN position bigint;
            CREATE SEQUENCE %1$I.events_position OWNED BY %1$I.events.position;
            ALTER TABLE %1$I.events ALTER COLUMN position SET DEFAULT nextval(%2$L::regclass);
            CREATE UNIQUE INDEX events_by_position ON %1$I.events (position)
                WHERE position IS NOT NULL;
            CREATE INDEX events_unnumbered ON %1$I.events (aggregate_type, aggregate_id, sequence)
                WHERE position IS NULL;
        $ddl$, store, format('%I.events_position', store));
    END IF;
END
$fn$;

SELECT chronicle_event_positions('public');
