"""ADQL geometry (POINT, CIRCLE, POLYGON, BOX) translated to exact spherical SQL.

``store.adql`` hands this module the argument subtrees of ``CONTAINS``,
``INTERSECTS``, ``DISTANCE``, ``AREA``, ``COORD1/2`` and scisql's point-in-shape
functions; it reads the shapes (:func:`parse_shape`) and returns DuckDB boolean
or numeric expressions built from the macros of :mod:`store.spherical_sql`.
Shapes whose parameters are constants are prepared in Python (edge poles,
bounding caps, areas); shapes built from columns are tested with the same
formulas written in SQL.

Supported relations (everything else raises ``UnsupportedConstructError``):
POINT in CIRCLE / POLYGON / BOX; CIRCLE in CIRCLE or POLYGON; POLYGON in
CIRCLE or POLYGON; INTERSECTS of two CIRCLEs, of a CIRCLE and a POLYGON, or
with a POINT (same as CONTAINS).  POLYGON vertices may be constants or columns
(e.g. the CcdVisit corners ``llcra, llcdec, ...``); a BOX must be constant
except in ``CONTAINS(POINT, BOX)``.  POLYGONs must be convex (scisql and Qserv
require the same); INTERSECTS of two POLYGONs/BOXes is not supported.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sqlglot import exp

from store.errors import InvalidQueryError, UnsupportedConstructError
from store.spherical_sql import PreparedPolygon, expand, number, unit_vectors

__all__ = [
    "SHAPE_FUNCTIONS",
    "Box",
    "Circle",
    "Point",
    "Polygon",
    "area_sql",
    "const_value",
    "contains_sql",
    "distance_bound_sql",
    "distance_sql",
    "intersects_sql",
    "parse_shape",
    "polygon_from_points",
]

#: ADQL functions that construct a geometry value.
SHAPE_FUNCTIONS = frozenset({"point", "circle", "polygon", "box", "centroid"})

_ICRS_FRAMES = frozenset({"", "icrs", "fk5", "j2000"})


def const_value(node: exp.Expression) -> float | None:
    """Value of a constant numeric SQL expression (literals, + - * /, unary minus), else None."""
    if isinstance(node, exp.Paren):
        return const_value(node.this)
    if isinstance(node, exp.Literal) and not node.is_string:
        return float(node.this)
    if isinstance(node, exp.Neg):
        value = const_value(node.this)
        return None if value is None else -value
    if isinstance(node, exp.Add | exp.Sub | exp.Mul | exp.Div):
        left, right = const_value(node.this), const_value(node.expression)
        if left is None or right is None:
            return None
        if isinstance(node, exp.Add):
            return left + right
        if isinstance(node, exp.Sub):
            return left - right
        if isinstance(node, exp.Mul):
            return left * right
        return left / right if right != 0 else None
    if isinstance(node, exp.Pi):
        return math.pi
    return None


@dataclass(frozen=True)
class Point:
    """A position; ``ra``/``dec`` are SQL expressions in degrees."""

    ra: exp.Expression
    dec: exp.Expression

    def const(self) -> tuple[float, float] | None:
        ra, dec = const_value(self.ra), const_value(self.dec)
        return None if ra is None or dec is None else (ra, dec)


@dataclass(frozen=True)
class Circle:
    """A spherical cap: centre and radius (degrees)."""

    center: Point
    radius: exp.Expression


@dataclass(frozen=True)
class Polygon:
    """A convex polygon; ``const`` is set when every vertex is a constant."""

    vertices: tuple[Point, ...]
    const: PreparedPolygon | None
    what: str = "POLYGON"


@dataclass(frozen=True)
class Box:
    """ADQL BOX: centre, full width and height (degrees), sides on great circles."""

    center: Point
    width: exp.Expression
    height: exp.Expression

    def as_polygon(self) -> Polygon | None:
        """The equivalent constant polygon (corners computed here), or None if not constant."""
        centre, width, height = self.center.const(), const_value(self.width), const_value(self.height)
        if centre is None or width is None or height is None:
            return None
        ra0 = np.radians(centre[0])
        c = unit_vectors(*centre)
        east = np.array([-np.sin(ra0), np.cos(ra0), 0.0])
        north = np.cross(c, east)
        tw, th = np.tan(np.radians(width / 2)), np.tan(np.radians(height / 2))
        corners = [
            c + sx * tw * east + sy * th * north for sx, sy in ((1, 1), (-1, 1), (-1, -1), (1, -1))
        ]
        corners = np.array(corners) / np.linalg.norm(corners, axis=1)[:, None]
        ra = np.degrees(np.arctan2(corners[:, 1], corners[:, 0])) % 360.0
        dec = np.degrees(np.arcsin(np.clip(corners[:, 2], -1.0, 1.0)))
        polygon = PreparedPolygon(ra, dec, what="BOX")
        vertices = tuple(Point(number(r), number(d)) for r, d in zip(ra, dec, strict=True))
        return Polygon(vertices, polygon, "BOX")


Shape = Point | Circle | Polygon | Box


def _name(node: exp.Expression) -> str:
    if isinstance(node, exp.Anonymous):
        return node.name.lower()
    return type(node).__name__.lower()


def parse_shape(node: exp.Expression, scalar: Callable[[exp.Expression], exp.Expression]) -> Shape:
    """Read an ADQL geometry constructor.

    Parameters
    ----------
    node : sqlglot expression
        ``POINT(...)``, ``CIRCLE(...)``, ``POLYGON(...)``, ``BOX(...)`` or
        ``CENTROID(CIRCLE(...))``, with or without the coordinate-system string.
    scalar : callable
        Translates a numeric argument subtree (applied to every coordinate).

    Raises
    ------
    UnsupportedConstructError
        Not a geometry constructor (e.g. a region column), or a frame other than ICRS.
    InvalidQueryError
        Wrong number of arguments, negative radius or size, declination out of range.
    """
    name = _name(node)
    if name not in SHAPE_FUNCTIONS:
        raise UnsupportedConstructError(
            f"geometry argument {node.sql('duckdb')!r} is not a POINT, CIRCLE, POLYGON or BOX literal "
            "(region columns such as s_region are not supported)"
        )
    args = list(node.expressions) if isinstance(node, exp.Anonymous) else [node.this]
    if args and isinstance(args[0], exp.Literal) and args[0].is_string:
        frame = args.pop(0).this.strip()
        if frame.split(" ")[0].lower() not in _ICRS_FRAMES:
            raise UnsupportedConstructError(f"coordinate system {frame!r} in {name.upper()} (only ICRS)")
    if name == "centroid":
        if len(args) == 1:
            inner = parse_shape(args[0], scalar)
            if isinstance(inner, Circle | Box):
                return inner.center
        raise UnsupportedConstructError("CENTROID of anything but a CIRCLE or BOX")
    if name == "point":
        _check_count(name, args, (2,))
        return _point(args[0], args[1], scalar)
    if name == "circle":
        _check_count(name, args, (2, 3))
        centre = _point_arg(args[0], scalar) if len(args) == 2 else _point(args[0], args[1], scalar)
        return Circle(centre, _size(args[-1], "CIRCLE radius", scalar))
    if name == "box":
        _check_count(name, args, (3, 4))
        centre = _point_arg(args[0], scalar) if len(args) == 3 else _point(args[0], args[1], scalar)
        box = Box(centre, _size(args[-2], "BOX width", scalar), _size(args[-1], "BOX height", scalar))
        for value, what in ((box.width, "width"), (box.height, "height")):
            size = const_value(value)
            if size is not None and size >= 180.0:
                raise InvalidQueryError(f"BOX {what} must be < 180 degrees, got {size!r}")
        return box
    # POLYGON: coordinate pairs, or (ADQL 2.1) POINTs.
    if args and all(_name(a) in ("point", "centroid") for a in args):
        vertices = [_point_arg(a, scalar) for a in args]
    else:
        if len(args) % 2 or len(args) < 6:
            raise InvalidQueryError(
                f"POLYGON needs an even number (>= 6) of vertex coordinates, got {len(args)}"
            )
        vertices = [_point(args[i], args[i + 1], scalar) for i in range(0, len(args), 2)]
    return polygon_from_points(vertices)


def polygon_from_points(vertices: list[Point]) -> Polygon:
    """A POLYGON from its vertices (prepared in Python when they are all constants)."""
    if len(vertices) < 3:
        raise InvalidQueryError(f"POLYGON needs at least 3 vertices, got {len(vertices)}")
    consts = [v.const() for v in vertices]
    if any(c is None for c in consts):
        return Polygon(tuple(vertices), None)
    ra, dec = zip(*consts, strict=True)
    return Polygon(tuple(vertices), PreparedPolygon(ra, dec))


def _check_count(name: str, args: list, allowed: tuple[int, ...]) -> None:
    if len(args) not in allowed:
        expected = " or ".join(map(str, allowed))
        raise InvalidQueryError(
            f"{name.upper()} takes {expected} arguments after the coordinate system, got {len(args)}"
        )


def _point_arg(node: exp.Expression, scalar) -> Point:
    shape = parse_shape(node, scalar)
    if not isinstance(shape, Point):
        raise InvalidQueryError(f"expected a POINT, got {node.sql('duckdb')!r}")
    return shape


def _point(ra: exp.Expression, dec: exp.Expression, scalar) -> Point:
    point = Point(scalar(ra), scalar(dec))
    value = const_value(point.dec)
    if value is not None and abs(value) > 90.0:
        raise InvalidQueryError(f"declination must be within [-90, 90] degrees, got {value!r}")
    return point


def _size(node: exp.Expression, what: str, scalar) -> exp.Expression:
    value = scalar(node)
    size = const_value(value)
    if size is not None and size < 0:
        raise InvalidQueryError(f"{what} must be >= 0 degrees, got {size!r}")
    return value


# -- relations ------------------------------------------------------------------------------


def _polygon(shape: Polygon | Box) -> Polygon:
    """The shape as a Polygon; a BOX must have constant parameters."""
    if isinstance(shape, Polygon):
        return shape
    polygon = shape.as_polygon()
    if polygon is None:
        raise UnsupportedConstructError("BOX with non-constant parameters outside CONTAINS(POINT, BOX)")
    return polygon


def _and(*terms: exp.Expression) -> exp.Expression:
    result = terms[0]
    for term in terms[1:]:
        result = exp.And(this=result, expression=term)
    return exp.Paren(this=result)


def _or(*terms: exp.Expression) -> exp.Expression:
    result = terms[0]
    for term in terms[1:]:
        result = exp.Or(this=result, expression=term)
    return exp.Paren(this=result)


def _point_in_circle(point: Point, circle: Circle) -> exp.Expression:
    # The test is symmetric; put the columns first so the band prefilter
    # compares bare columns with constants and is pushed into the scan.
    p, c = point, circle.center
    if p.const() is not None and c.const() is None:
        p, c = c, p
    if const_value(circle.radius) is None:  # checked per row (negative radius raises)
        return expand("drp_pt_in_circle", p.ra, p.dec, c.ra, c.dec, circle.radius)
    return _and(
        expand("drp_cap_bounds", p.ra, p.dec, c.ra, c.dec, circle.radius),
        expand("drp_hav_in_circle", p.ra, p.dec, c.ra, c.dec, circle.radius),
    )


def _point_in_polygon(point: Point, polygon: Polygon) -> exp.Expression:
    if polygon.const is not None:
        return polygon.const.contains_sql(point.ra, point.dec)
    # Vertices from columns: the side of each edge from a triple product in
    # SQL, signed by the polygon's orientation so either winding works.
    orientation = _orientation(polygon)
    tests = [
        exp.GTE(
            this=exp.Mul(
                this=expand("drp_triple", *_xy(a), *_xy(b), point.ra, point.dec),
                expression=orientation.copy(),
            ),
            expression=number(0.0),
        )
        for a, b in _edges(polygon)
    ]
    return _and(*tests)


def _edges(polygon: Polygon) -> list[tuple[Point, Point]]:
    v = polygon.vertices
    return [(v[i], v[(i + 1) % len(v)]) for i in range(len(v))]


def _orientation(polygon: Polygon) -> exp.Expression:
    """+1 for counter-clockwise vertices (seen from outside), -1 for clockwise, in SQL."""
    v = polygon.vertices
    n = len(v)
    turns = [
        expand("drp_triple", *_xy(v[i]), *_xy(v[(i + 1) % n]), *_xy(v[(i + 2) % n])) for i in range(n)
    ]
    return exp.Anonymous(this="sign", expressions=[_sum(turns)])


def _xy(point: Point) -> tuple[exp.Expression, exp.Expression]:
    return point.ra, point.dec


def _sum(terms: list[exp.Expression]) -> exp.Expression:
    result = terms[0]
    for term in terms[1:]:
        result = exp.Add(this=result, expression=term)
    return exp.Paren(this=result)


def _circle_in_circle(inner: Circle, outer: Circle) -> exp.Expression:
    slack = exp.Paren(this=exp.Sub(this=outer.radius.copy(), expression=inner.radius.copy()))
    a, b = inner.center, outer.center
    if a.const() is not None and b.const() is None:
        a, b = b, a
    return _and(
        exp.GTE(this=slack, expression=number(0.0)),
        expand("drp_cap_bounds", a.ra, a.dec, b.ra, b.dec, slack),
        expand("drp_hav_in_circle", a.ra, a.dec, b.ra, b.dec, slack),
    )


def _circle_in_polygon(circle: Circle, polygon: PreparedPolygon) -> exp.Expression:
    # The cap lies inside the hemisphere of every edge iff its centre is at
    # least one radius from each edge's great circle, on the inner side.
    sin_r = _sin_radius(circle)
    c = circle.center
    cap = polygon.cap_sql(c.ra, c.dec)
    tests = [
        exp.GTE(this=expand("drp_halfspace", c.ra, c.dec, *map(float, n)), expression=sin_r.copy())
        for n in polygon.normals
    ]
    return _and(*([cap] if cap is not None else []), *tests)


def _sin_deg(angle: exp.Expression) -> exp.Expression:
    clipped = exp.Least(this=angle.copy(), expressions=[number(90.0)])
    return exp.Sin(this=exp.Anonymous(this="radians", expressions=[clipped]))


def _polygon_in_circle(polygon: Polygon, circle: Circle) -> exp.Expression:
    # A cap under 90 degrees is convex, so it holds the polygon iff it holds
    # the vertices; a larger cap holds it iff the polygon misses the
    # complementary cap around the antipode.
    small = _and(*[_point_in_circle(v, circle) for v in polygon.vertices])
    r = const_value(circle.radius)
    if r is not None and r < 90.0:
        return small
    c = circle.center
    antipode = Circle(
        Point(
            exp.Paren(this=exp.Add(this=c.ra.copy(), expression=number(180.0))),
            exp.Paren(this=exp.Neg(this=c.dec.copy())),
        ),
        exp.Paren(this=exp.Sub(this=number(180.0), expression=circle.radius.copy())),
    )
    large = exp.Not(this=_circle_meets(antipode, polygon))
    if r is not None:
        return large
    when = exp.If(this=exp.LT(this=circle.radius.copy(), expression=number(90.0)), true=small)
    return exp.Paren(this=exp.Case(ifs=[when], default=large))


def _circle_meets(circle: Circle, polygon: Polygon) -> exp.Expression:
    if polygon.const is not None:
        return _circle_meets_polygon(circle, polygon.const)
    return _circle_meets_column_polygon(circle, polygon)


def _circle_meets_polygon(circle: Circle, polygon: PreparedPolygon) -> exp.Expression:
    # The cap meets the polygon iff its centre is inside, or some edge arc
    # comes within the radius: either the foot of the perpendicular from the
    # centre lies on the arc and the great circle is close enough, or an end
    # vertex is within the radius.
    c = circle.center
    sin_r = _sin_radius(circle)
    terms = [polygon.contains_sql(c.ra, c.dec, prefilter=False)]
    n = len(polygon.vertices)
    for i in range(n):
        a, b, pole = polygon.vertices[i], polygon.vertices[(i + 1) % n], polygon.normals[i]
        near = exp.LTE(
            this=exp.Abs(this=expand("drp_halfspace", c.ra, c.dec, *map(float, pole))),
            expression=sin_r.copy(),
        )
        terms.append(
            _and(
                near,
                PreparedPolygon.halfspace_sql(c.ra, c.dec, np.cross(pole, a)),
                PreparedPolygon.halfspace_sql(c.ra, c.dec, np.cross(b, pole)),
            )
        )
    for vertex in polygon.vertices_radec:
        terms.append(expand("drp_hav_in_circle", c.ra, c.dec, *vertex, circle.radius))
    result = _or(*terms)
    if polygon.radius_deg < 89.0:
        # Triangle inequality: the centre is within (polygon cap + radius) of the polygon centre.
        reach = exp.Paren(
            this=exp.Add(this=number(polygon.radius_deg + 1e-9), expression=circle.radius.copy())
        )
        result = _and(expand("drp_cap_bounds", c.ra, c.dec, *_center_radec(polygon), reach), result)
    return result


def _circle_meets_column_polygon(circle: Circle, polygon: Polygon) -> exp.Expression:
    # Same criterion as _circle_meets_polygon with the edge poles n = a x b
    # written through dot products (Binet-Cauchy): (a x p).n = p.b - (a.b)(p.a),
    # (p x b).n = p.a - (p.b)(a.b), |n|^2 = 1 - (a.b)^2, p.n = triple(a, b, p).
    c = circle.center
    sin_r = _sin_radius(circle)
    terms = [_point_in_polygon(c, polygon)]
    for a, b in _edges(polygon):
        ab, pa, pb = (expand("drp_dot", *_xy(x), *_xy(y)) for x, y in ((a, b), (c, a), (c, b)))
        t = expand("drp_triple", *_xy(a), *_xy(b), *_xy(c))
        near = exp.LTE(
            this=exp.Mul(this=t, expression=t.copy()),
            expression=exp.Mul(
                this=exp.Mul(this=sin_r.copy(), expression=sin_r.copy()),
                expression=_one_minus_square(ab),
            ),
        )
        after_a = exp.GTE(
            this=exp.Sub(this=pb, expression=exp.Mul(this=ab.copy(), expression=pa)),
            expression=number(0.0),
        )
        before_b = exp.GTE(
            this=exp.Sub(this=pa.copy(), expression=exp.Mul(this=pb.copy(), expression=ab.copy())),
            expression=number(0.0),
        )
        terms.append(_and(near, after_a, before_b))
    for vertex in polygon.vertices:
        terms.append(expand("drp_hav_in_circle", c.ra, c.dec, vertex.ra, vertex.dec, circle.radius))
    return _or(*terms)


def _circle_in_column_polygon(circle: Circle, polygon: Polygon) -> exp.Expression:
    # Signed distance of the centre to each edge's great circle >= radius:
    # triple(a, b, c) * orientation >= sin(r) |a x b|.
    c = circle.center
    sin_r = _sin_radius(circle)
    orientation = _orientation(polygon)
    tests = []
    for a, b in _edges(polygon):
        ab = expand("drp_dot", *_xy(a), *_xy(b))
        tests.append(
            exp.GTE(
                this=exp.Mul(
                    this=expand("drp_triple", *_xy(a), *_xy(b), *_xy(c)), expression=orientation.copy()
                ),
                expression=exp.Mul(this=sin_r.copy(), expression=exp.Sqrt(this=_one_minus_square(ab))),
            )
        )
    return _and(*tests)


def _one_minus_square(x: exp.Expression) -> exp.Expression:
    return exp.Paren(
        this=exp.Sub(this=number(1.0), expression=exp.Mul(this=x.copy(), expression=x.copy()))
    )


def _sin_radius(circle: Circle) -> exp.Expression:
    r = const_value(circle.radius)
    return number(math.sin(math.radians(min(r, 90.0)))) if r is not None else _sin_deg(circle.radius)


def _center_radec(polygon: PreparedPolygon) -> tuple[float, float]:
    x, y, z = polygon.center
    return float(np.degrees(np.arctan2(y, x)) % 360.0), float(np.degrees(np.arctan2(z, np.hypot(x, y))))


def contains_sql(inner: Shape, outer: Shape) -> exp.Expression:
    """Boolean SQL for ADQL ``CONTAINS(inner, outer)``: ``inner`` lies within ``outer``."""
    if isinstance(outer, Point):
        raise UnsupportedConstructError("CONTAINS with a POINT as the containing region")
    if isinstance(inner, Point):
        if isinstance(outer, Circle):
            return _point_in_circle(inner, outer)
        if isinstance(outer, Box):
            polygon = outer.as_polygon()
            if polygon is None:
                return expand(
                    "drp_pt_in_box",
                    inner.ra,
                    inner.dec,
                    outer.center.ra,
                    outer.center.dec,
                    outer.width,
                    outer.height,
                )
            return _point_in_polygon(inner, polygon)
        return _point_in_polygon(inner, outer)
    if isinstance(inner, Circle):
        if isinstance(outer, Circle):
            return _circle_in_circle(inner, outer)
        polygon = _polygon(outer)
        if polygon.const is None:
            return _circle_in_column_polygon(inner, polygon)
        return _circle_in_polygon(inner, polygon.const)
    inner_polygon = _polygon(inner)
    if isinstance(outer, Circle):
        return _polygon_in_circle(inner_polygon, outer)
    outer_polygon = _polygon(outer)
    # Both convex: inside iff every vertex is inside.
    return _and(*[_point_in_polygon(v, outer_polygon) for v in inner_polygon.vertices])


def intersects_sql(a: Shape, b: Shape) -> exp.Expression:
    """Boolean SQL for ADQL ``INTERSECTS(a, b)``."""
    if isinstance(a, Point):
        return contains_sql(a, b)
    if isinstance(b, Point):
        return contains_sql(b, a)
    if isinstance(a, Circle) and isinstance(b, Circle):
        total = exp.Paren(this=exp.Add(this=a.radius.copy(), expression=b.radius.copy()))
        return _point_in_circle(a.center, Circle(b.center, total))
    if isinstance(b, Circle):
        a, b = b, a
    if isinstance(a, Circle):
        return _circle_meets(a, _polygon(b))
    raise UnsupportedConstructError("INTERSECTS of two POLYGON/BOX regions")


def distance_sql(p: Point, q: Point) -> exp.Expression:
    """Angular distance in degrees between two points."""
    return expand("drp_ang_sep", p.ra, p.dec, q.ra, q.dec)


def distance_bound_sql(p: Point, q: Point, limit: exp.Expression) -> exp.Expression:
    """Band prefilter implied by ``DISTANCE(p, q) <= limit`` (pushed into the scan)."""
    if p.const() is not None and q.const() is None:
        p, q = q, p
    return expand("drp_cap_bounds", p.ra, p.dec, q.ra, q.dec, limit)


def area_sql(shape: Shape) -> exp.Expression:
    """ADQL ``AREA``: solid angle in square degrees."""
    sq_deg = math.degrees(1.0) ** 2
    if isinstance(shape, Point):
        return number(0.0)
    if isinstance(shape, Circle):
        r = const_value(shape.radius)
        if r is not None:
            return number(2 * math.pi * (1 - math.cos(math.radians(min(r, 180.0)))) * sq_deg)
        radius = exp.Least(this=shape.radius.copy(), expressions=[number(180.0)])
        cos_r = exp.Cos(this=exp.Anonymous(this="radians", expressions=[radius]))
        return exp.Paren(
            this=exp.Mul(
                this=number(2 * math.pi * sq_deg),
                expression=exp.Paren(this=exp.Sub(this=number(1.0), expression=cos_r)),
            )
        )
    polygon = _polygon(shape)
    if polygon.const is None:
        raise UnsupportedConstructError("AREA of a POLYGON with non-constant vertices")
    return number(polygon.const.area_deg2())
