-- Room on each page of `steps` for the new version of every row it holds, so a step's
-- success (its one update, which grows the row by its output, times, history places and
-- actor) stays a HOT update: no new entries in the table's two indexes, less for vacuum.
-- At fillfactor 80 a third of those updates left the page (BENCHMARKS.md, 2 December).
-- Pages written from now on follow it; existing ones keep their layout.
ALTER TABLE stepwise.steps SET (fillfactor = 50);
