//! The knee as an ordered list of tissue objects: the first object containing a point
//! decides its tissue, so lesions and small structures are listed before what they sit in.

use super::contrast::Tissue;
use super::geom::{Frame, M3, V3, v3};
use super::knee::Knee;
use super::lesions::Lesions;
use super::sdf::{Aabb, Prim, Shape};

#[derive(Debug, Clone)]
pub(crate) struct Object {
    pub shape: Shape,
    pub tissue: Tissue,
    /// Outer layer `(tissue, thickness)`: cortex around marrow, skin around fat.
    pub shell: Option<(Tissue, f32)>,
    pub aabb: Aabb,
}

impl Object {
    fn new(shape: Shape, tissue: Tissue) -> Self {
        let aabb = shape.aabb();
        Self {
            shape,
            tissue,
            shell: None,
            aabb,
        }
    }
    fn shelled(shape: Shape, tissue: Tissue, shell: Tissue, thick: f32) -> Self {
        Self {
            shell: Some((shell, thick)),
            ..Self::new(shape, tissue)
        }
    }
    /// Tissue at a point whose distance is `d < 0`.
    pub fn tissue_at(&self, d: f32) -> Tissue {
        match self.shell {
            Some((t, thick)) if d > -thick => t,
            _ => self.tissue,
        }
    }
    /// Depth below the surface from which on the tissue no longer changes.
    pub fn solid_depth(&self) -> f32 {
        self.shell.map_or(0.0, |(_, t)| t)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Scene {
    pub objects: Vec<Object>,
}

impl Scene {
    pub fn build(knee: &Knee, les: &Lesions) -> Scene {
        let mut o = Vec::new();
        for (s, t) in &les.bone {
            o.push(Object::new(s.clone(), *t));
        }
        for bone in [&knee.femur, &knee.tibia, &knee.patella, &knee.fibula] {
            o.push(Object::shelled(
                bone.clone(),
                Tissue::Marrow,
                Tissue::Cortex,
                knee.cortex,
            ));
        }
        for c in [
            &knee.femoral_cartilage,
            &knee.patellar_cartilage,
            &knee.tibial_cartilage,
        ] {
            o.push(Object::new(c.clone(), Tissue::Cartilage));
        }
        for m in &knee.menisci {
            o.push(Object::new(m.clone(), Tissue::Meniscus));
        }
        for (s, t) in &les.acl {
            o.push(Object::new(s.clone(), *t));
        }
        o.push(Object::new(
            les.pcl.tube(0.0, 1.0, |_, c| c, |_| 1.0).into(),
            Tissue::Pcl,
        ));
        for t in &knee.tendons {
            o.push(Object::new(t.clone(), Tissue::Tendon));
        }
        for (s, t) in &les.soft {
            o.push(Object::new(s.clone(), *t));
        }
        o.push(Object::new(
            Shape::Intersect(vec![
                knee.joint_box.clone(),
                Shape::Offset(Box::new(knee.articular.clone()), knee.cart_f + les.effusion),
            ]),
            Tissue::Fluid,
        ));
        let pouch_y = knee.condyle_y + 24.0 + les.pouch * 0.5;
        o.push(Object::new(
            Prim::Ellipsoid {
                f: Frame::on(
                    &knee.femur_frame,
                    v3(
                        0.0,
                        pouch_y,
                        knee.patella_z.0 + knee.patella_z.1 + 14.0 + les.pouch,
                    ),
                    M3::IDENTITY,
                ),
                r: v3(knee.half_width * 0.6, les.pouch * 0.5, 18.0 + les.pouch),
            }
            .into(),
            Tissue::Fluid,
        ));
        o.push(Object::new(knee.artery.clone(), Tissue::Vessel));
        o.push(Object::new(knee.vein.clone(), Tissue::Vessel));
        for m in &knee.muscles {
            o.push(Object::new(m.clone(), Tissue::Muscle));
        }
        o.push(Object::shelled(
            knee.leg.clone(),
            Tissue::Fat,
            Tissue::Skin,
            1.5,
        ));
        Scene { objects: o }
    }

    /// Tissue at `p`, trying only `candidates` (object indices, in priority order)
    /// and falling back to `rest` when none contains the point.
    pub fn classify(&self, p: V3, candidates: &[u16], rest: Tissue) -> Tissue {
        for &i in candidates {
            let obj = &self.objects[i as usize];
            if obj.shell.is_none() {
                if obj.shape.inside(p) {
                    return obj.tissue;
                }
                continue;
            }
            let d = obj.shape.eval(p);
            if d < 0.0 {
                return obj.tissue_at(d);
            }
        }
        rest
    }
}
