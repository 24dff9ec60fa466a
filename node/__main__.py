from node.daemon import main

raise SystemExit(main())
