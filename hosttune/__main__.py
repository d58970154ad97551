from hosttune.cli import main

raise SystemExit(main())
