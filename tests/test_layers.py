"""The layers of docs/architecture.md: no import circle among the project's modules.

`lint-imports` (CI) checks that each layer imports only downward; this test checks the
whole module graph for circles, lazy imports (inside functions) included, since grimp
reads every import statement of every module.
"""

from __future__ import annotations

import grimp
import networkx as nx


def test_no_import_circle_among_the_projects_modules():
    graph = grimp.build_graph("fedsim", "strategies", "topologies")
    imports = nx.DiGraph()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            imports.add_edge(module, imported)
    circles = [" -> ".join([*c, c[0]]) for c in nx.simple_cycles(imports)]
    assert circles == [], "\n".join(circles)
